"""PyTorch <= 0.3's single-key messages and one-sided whole-model lists (#16).

PyTorch 0.3's ``Module.load_state_dict`` walked the checkpoint's keys in order and raised at the
first problem: ``KeyError: 'unexpected key "K" in state_dict'`` for the first key the model
lacks, ``While copying the parameter named K, whose dimensions in the model are ... and whose
dimensions in the checkpoint are ...`` for the first shape that differs, and only when every
checkpoint key had loaded, ``KeyError: 'missing keys in state_dict: "{...}"'`` with the whole
set. Current torch cannot raise these, so :func:`load_03` runs that loop on the real key sets and
shapes of real models and files, with the messages of torch 0.3.1's ``torch/nn/modules/module.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDE_COMMAND, DECIDED, diagnose_text
from tests.ops.diagnose.generated_corpus import load_error


def load_03(model: nn.Module, state: Mapping[str, object]) -> str:
    """The message PyTorch 0.3's ``load_state_dict(state)`` raised for ``model``, or ``""``."""
    own = model.state_dict()
    for name, param in state.items():
        if name not in own:
            return "KeyError: " + str(KeyError(f'unexpected key "{name}" in state_dict'))
        if isinstance(param, torch.Tensor) and own[name].shape != param.shape:
            return (f"RuntimeError: While copying the parameter named {name}, whose dimensions in "
                    f"the model are {own[name].size()} and whose dimensions in the checkpoint are "
                    f"{param.size()}.")
    missing = set(own) - set(state)
    return "KeyError: " + str(KeyError(f'missing keys in state_dict: "{missing}"')) if missing else ""


class Segmenter(nn.Module):
    def __init__(self, classes: int = 19, aux: bool = False) -> None:
        super().__init__()
        self.stem, self.body = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)
        self.head = nn.Conv2d(8, classes, 1)
        if aux:
            self.aux = nn.Conv2d(8, classes, 1)


def _answer(text: str) -> tuple[str | None, float, list[str]]:
    causes = diagnose_text(text).causes
    return (causes[0].label if causes else None, causes[0].confidence if causes else 0.0,
            [c.label for c in causes])


def test_the_first_unexpected_key_is_a_cut_list() -> None:
    # a DataParallel file loaded into the plain model: one key of the whole relation is shown
    text = load_03(Segmenter(), nn.DataParallel(Segmenter()).state_dict())
    assert text == "KeyError: 'unexpected key \"module.stem.weight\" in state_dict'"
    result = diagnose_text(text)
    assert result.causes[0].label == "prefix_added" and not result.decided
    assert result.to_dict()["decide_with"] == DECIDE_COMMAND


def test_the_first_key_of_a_training_dict_decides() -> None:
    text = load_03(Segmenter(), {"epoch": 3, "state_dict": Segmenter().state_dict()})
    label, conf, _ = _answer(text)
    assert (label, conf >= DECIDED) == ("wrapped_checkpoint", True)


def test_the_missing_set_rules_out_every_reading_with_extra_checkpoint_keys() -> None:
    # The file lacks the model's aux head; the model is wrapped, so every key carries module.
    # PyTorch 0.3 raised the missing set only after every file key loaded: the file has the
    # prefix, so neither a missing prefix nor another model's file can be the cause.
    model = nn.DataParallel(Segmenter(aux=True))
    text = load_03(model, nn.DataParallel(Segmenter()).state_dict())
    assert "missing keys in state_dict" in text and "module.aux.weight" in text
    label, conf, labels = _answer(text)
    assert not {"prefix_missing", "prefix_added", "wrong_model", "wrapped_checkpoint"} & set(labels)
    # an auxiliary head only the model has: the aux option it was built with, or new code
    assert label == "architecture_variant" and "model_code_changed" in labels and conf < DECIDED
    # A file without the prefix raises at its first key instead: a prefix candidate.
    text = load_03(model, Segmenter(aux=True).state_dict())
    assert text == "KeyError: 'unexpected key \"stem.weight\" in state_dict'"
    _, conf, labels = _answer(text)
    assert conf < DECIDED and "prefix_missing" in labels


def test_the_missing_set_is_read_whole() -> None:
    text = load_03(Segmenter(), {k: v for k, v in Segmenter().state_dict().items()
                                 if not k.startswith("head.")})
    result = diagnose_text(text)
    assert set(result.evidence.missing) == {"head.weight", "head.bias"}
    assert not result.evidence.truncated and result.evidence.nothing_unexpected


def test_while_copying_names_the_first_shape_that_differs() -> None:
    text = load_03(Segmenter(classes=19), Segmenter(classes=21).state_dict())
    assert text.startswith("RuntimeError: While copying the parameter named head.weight")
    assert _answer(text)[0] == "head_size_mismatch"


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*(nn.Linear(8, 8) for _ in range(6)))
        self.classifier = nn.Linear(8, 3)


def _side(text: str, keep: str) -> str:
    drop = "Unexpected key(s)" if keep == "missing" else "Missing key(s)"
    return "\n".join(line for line in text.split("\n") if drop not in line)


@pytest.mark.parametrize("state", [
    {f"module.{k}": v for k, v in Plain().state_dict().items()},
    {"epoch": 1, "state_dict": Plain().state_dict()},
    nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).state_dict(),
], ids=["prefix", "training_dict", "other_model"])
def test_every_model_key_missing_alone_abstains(state: Mapping[str, object]) -> None:
    text = _side(load_error(Plain(), state), "missing")
    assert text.count('"') == 2 * len(Plain().state_dict())  # the whole model, nothing else
    result = diagnose_text(text)
    assert not result.decided and len(result.causes) >= 2
    assert result.to_dict()["decide_with"] == DECIDE_COMMAND


def test_every_checkpoint_key_with_the_prefix_unexpected_alone_decides() -> None:
    text = _side(load_error(Plain(), {f"module.{k}": v for k, v in Plain().state_dict().items()}),
                 "unexpected")
    label, conf, _ = _answer(text)
    assert (label, conf >= DECIDED) == ("prefix_added", True)
