"""Calibration by the breadth of the evidence (``ckpttools/ops/diagnose/calibration.py``).

On the held-out sets scored before tuning, the confident wrong answers that did not come from
shapes came from relations read off too little: a catch-all from two key pairs, and a missing
prefix read from a list of the model's keys alone. Each case here builds the texts that real
``load_state_dict`` calls raise and checks that the thin reading is a candidate with the deciding
command, while the same relation with the other side shown still decides.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDE_COMMAND, DECIDED, diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.scoring import rules_first


class Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 19, 1)


class Vgg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))


def _files() -> dict[str, object]:
    """Three files that fail on a DataParallel model for three different reasons."""
    return {"prefix_missing": Segmenter().state_dict(), "wrong_model": Vgg().state_dict(),
            "wrapped_checkpoint": {"epoch": 3, "state_dict": nn.DataParallel(Segmenter()).state_dict()}}


def _missing_only(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if "Unexpected key(s)" not in line)


def test_only_the_models_keys_read_the_same_for_three_causes() -> None:
    model = nn.DataParallel(Segmenter())
    texts = {label: _missing_only(load_error(model, sd)) for label, sd in _files().items()}
    assert len(set(texts.values())) == 1  # the missing list is every model key, whatever the file
    result = diagnose_text(texts["prefix_missing"])
    assert result.causes[0].label == "prefix_missing" and not result.decided
    assert result.to_dict()["decide_with"] == DECIDE_COMMAND
    assert result.causes[0].evidence["facts"]["thin"] == "only the model's keys shown"
    assert [c.label for c in result.causes] == ["prefix_missing", "wrapped_checkpoint", "wrong_model"]


@pytest.mark.parametrize("label", ["prefix_missing", "wrapped_checkpoint"])
def test_each_candidates_fix_loads_its_file(tmp_path: Path, label: str) -> None:
    # the one text lists every reading with its fix; the reading that is the file's cause loads it
    torch.manual_seed(0)
    saved = _files()[label]
    path = tmp_path / "ckpt.pth"
    torch.save(saved, path)
    model = nn.DataParallel(Segmenter())
    text = _missing_only(load_error(model, torch.load(path, weights_only=True)))
    cause = next(c for c in diagnose_text(text).causes if c.label == label)
    scope: dict[str, Any] = {"model": model}
    exec(compile(cause.fix_code.replace("CKPT", str(path)), f"<{label}>", "exec"), scope)
    weights = saved["state_dict"] if label == "wrapped_checkpoint" else saved  # type: ignore[index]
    for key, value in weights.items():  # type: ignore[union-attr]
        assert torch.equal(model.module.state_dict()[key.removeprefix("module.")], value), key


@pytest.mark.parametrize("label", ["prefix_missing", "wrapped_checkpoint"])
def test_the_checkpoints_keys_shown_decide(label: str) -> None:
    result = diagnose_text(load_error(nn.DataParallel(Segmenter()), _files()[label]))
    assert result.decided and result.causes[0].label == label
    assert "thin" not in result.causes[0].evidence["facts"]


class Net(nn.Module):
    """``proj`` as a plain Linear or wrapped in a Sequential; ``out`` one layer or two."""

    def __init__(self, wrap_proj: bool, two_layer_out: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 8)
        self.proj = nn.Sequential(OrderedDict(inner=nn.Linear(8, 8))) if wrap_proj else nn.Linear(8, 8)
        self.out = (nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)) if two_layer_out
                    else nn.Linear(8, 3))


def test_changed_code_read_from_two_key_pairs_is_a_candidate() -> None:
    # proj.weight/bias -> proj.inner.weight/bias: a library's rename of one layer reads the same
    text = load_error(Net(True, False), Net(False, False).state_dict())
    assert text.count('"') == 8
    result = diagnose_text(text)
    cause = result.causes[0]
    assert cause.label == "model_code_changed" and cause.confidence < DECIDED
    assert cause.evidence["facts"]["thin"] == "few keys" and not result.decided


def test_changed_code_over_more_keys_still_decides() -> None:
    text = load_error(Net(True, True), Net(False, False).state_dict())
    cause = diagnose_text(text).causes[0]  # the report bounds it (test_reliability.py)
    assert cause.label == "model_code_changed" and rules_first(text).confidence >= DECIDED


def test_checkpoint_diagnosis_is_not_capped() -> None:
    # With the files, both key sets are complete: the same two pairs are all there is.
    from ckpttools.ops.diagnose.diagnosis import diagnose_checkpoint

    result = diagnose_checkpoint(Net(False, False).state_dict(), Net(True, False))
    assert all("thin" not in c.evidence["facts"] for c in result.causes)


class Lm(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, 64)
        self.dense = nn.Linear(64, 64)


class Vit(nn.Module):
    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, 96))
        self.proj = nn.Linear(96, 96)


def test_half_the_vocabulary_reads_as_one_of_two_ranks() -> None:
    # 2048 rows where the model has 4096: another vocabulary, or rank 0 of a 2-way split
    result = diagnose_text(load_error(Lm(4096), Lm(2048).state_dict()))
    cause = result.causes[0]
    assert cause.label == "head_size_mismatch" and not result.decided
    assert cause.evidence["facts"]["thin"] == "every checkpoint tensor is 1/k of the model's on one axis"
    # naming the parallel size decides for the piece
    named = "using world size: 1 and model-parallel size: 2\n" + load_error(Lm(4096), Lm(2048).state_dict())
    assert diagnose_text(named).causes[0].label == "partitioned_checkpoint"


def test_another_vocabulary_of_no_power_of_two_ratio_still_decides() -> None:
    result = diagnose_text(load_error(Lm(4096), Lm(3000).state_dict()))
    assert result.causes[0].label == "head_size_mismatch" and result.decided


def test_a_position_table_is_never_a_rank_piece() -> None:
    # every rank holds tokens and tables whole: a quarter of the positions is another grid
    result = diagnose_text(load_error(Vit(256), Vit(64).state_dict()))
    assert result.causes[0].label == "architecture_variant" and result.decided


def test_candidates_read_from_the_models_keys_alone_are_worded_as_guesses(tmp_path: Path) -> None:
    """Only the model's keys are shown: the file's entries and the other model are guesses, said
    as guesses, and the entry the fix loads is a ``# set:`` line the user fills in."""
    text = _missing_only(load_error(nn.DataParallel(Segmenter()), _files()["prefix_missing"]))
    causes = {c.label: c for c in diagnose_text(text).causes}
    wrapped, other = causes["wrapped_checkpoint"], causes["wrong_model"]
    assert wrapped.summary.startswith("if the file is a whole training checkpoint")
    assert "top-level keys:" not in wrapped.summary  # none were shown
    assert wrapped.fix_code.startswith('ENTRY = "state_dict"  # set: ')
    assert other.summary.startswith("if the file was made for another model")
    assert "unexpected" not in other.summary
    # the printed fix with ENTRY set to the file's real entry loads it
    saved = {"epoch": 3, "model": nn.DataParallel(Segmenter()).state_dict()}
    path = tmp_path / "ckpt.pth"
    torch.save(saved, path)
    code = wrapped.fix_code.replace('ENTRY = "state_dict"', 'ENTRY = "model"')
    model = nn.DataParallel(Segmenter())
    exec(compile(code.replace("CKPT", str(path)), "<wrapped>", "exec"), {"model": model})
    for key, value in saved["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
