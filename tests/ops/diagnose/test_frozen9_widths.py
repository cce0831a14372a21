"""Size readings found while tuning on frozen9/ (#16).

frozen9's confident wrong answers included one layer's weight and bias read as a classifier of
another size where the layer projects into another model's hidden width (both sizes multiples of
128: ``ckpttools/ops/diagnose/hidden_widths.py``), and a fairseq/BART position table
(``embed_positions``) read as a vocabulary. Every text here is the error a real
``load_state_dict`` raises; every printed fix is run on a copy of the real model and its file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDE_COMMAND, diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.printed import labels as _labels, run_fix as _run_fix


# -- a projection into a language model's width (minigpt4_269/77, qwenvlft37) -------------------

class Bridge(nn.Module):
    """A vision encoder and the layer that projects its features into a language model's width."""

    def __init__(self, width: int, nested: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 16)
        if nested:  # Qwen2-VL's merger: the last layer of a small MLP
            self.merger = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, width))
        else:  # MiniGPT-4's llama_proj
            self.llama_proj = nn.Linear(16, width)


@pytest.mark.parametrize(("saved_width", "model_width", "nested"), [
    (384, 256, False), (256, 384, False), (640, 512, True)], ids=["wider", "narrower", "mlp"])
def test_a_projection_between_two_hidden_widths_is_a_width_candidate_first(
        tmp_path: Path, saved_width: int, model_width: int, nested: bool) -> None:
    saved = Bridge(saved_width, nested).state_dict()
    path = tmp_path / "bridge.pth"
    torch.save(saved, path)
    text = load_error(Bridge(model_width, nested), torch.load(path, weights_only=True))
    assert f"torch.Size([{saved_width}, 16]) from checkpoint" in text
    result = diagnose_text(text)
    assert not result.decided, _labels(result)
    assert result.to_dict()["decide_with"] == DECIDE_COMMAND
    assert [c.label for c in result.causes[:2]] == ["architecture_variant", "head_size_mismatch"]
    # the second candidate's printed fix (drop the layer) runs and loads everything else
    head = result.causes[1]
    loaded = _run_fix(head.fix_code, Bridge(model_width, nested), path)
    assert torch.equal(loaded.state_dict()["encoder.weight"], saved["encoder.weight"])


@pytest.mark.parametrize(("saved_classes", "model_classes"), [(1000, 10), (384, 10), (1000, 256)])
def test_a_class_count_beside_a_width_still_decides(saved_classes: int, model_classes: int) -> None:
    # one of the two sizes is no hidden width: a count of classes, as before
    result = diagnose_text(load_error(Bridge(model_classes, False), Bridge(saved_classes, False).state_dict()))
    assert result.decided and result.causes[0].label == "head_size_mismatch", _labels(result)


# -- a fairseq/BART learned position table (nougat16) -------------------------------------------

class Decoder(nn.Module):
    """fairseq and transformers' BART/mBART layout: tokens and learned positions (max length + 2)."""

    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(50, 16)
        self.embed_positions = nn.Embedding(max_length + 2, 16)


class Seq2Seq(nn.Module):
    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.decoder = Decoder(max_length)


def test_a_learned_position_table_of_another_length_is_the_input_length() -> None:
    text = load_error(Seq2Seq(48), Seq2Seq(64).state_dict())
    assert "size mismatch for decoder.embed_positions.weight" in text
    result = diagnose_text(text)
    assert result.decided, _labels(result)
    top = result.causes[0]
    assert top.label == "architecture_variant" and "position" in top.summary
    assert not any(c.label == "head_size_mismatch" for c in result.causes), _labels(result)


def test_the_token_table_beside_it_is_still_a_vocabulary() -> None:
    class Tokens(Decoder):
        def __init__(self, vocab: int) -> None:
            super().__init__(48)
            self.embed_tokens = nn.Embedding(vocab, 16)

    result = diagnose_text(load_error(Tokens(50), Tokens(64).state_dict()))
    assert result.decided and result.causes[0].label == "head_size_mismatch", _labels(result)


# -- a report naming the saved key beside the expected one (trainllm36) --------------------------

class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.out = nn.Linear(8, 4)


@pytest.mark.parametrize("wrap", ["compile", "dataparallel"])
def test_a_report_naming_a_key_beside_itself_under_a_wrapper_is_the_prefix(tmp_path: Path, wrap: str) -> None:
    wrapped = torch.compile(Blocks()) if wrap == "compile" else nn.DataParallel(Blocks())
    path = tmp_path / "wrapped.pth"
    torch.save(wrapped.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    text = load_error(Blocks(), saved)
    missing = text.split("Missing key(s) in state_dict: ")[1].split(". ")[0].count('"') // 2
    saved_key = next(iter(saved))
    expected = saved_key.partition(".")[2]
    # the bug report as written: the two names, labelled, and the count of the real load
    report = (f"When loading, checkpoints contain a prefix in their state dict keys.\n"
              f"- **Checkpoint keys:** `{saved_key}`\n- **Expected keys:** `{expected}`\n"
              f"- **Result:** {missing} missing keys during loading, the weights stay random.\n")
    result = diagnose_text(report)
    assert not result.decided, _labels(result)
    top = result.causes[0]
    assert top.label == "prefix_added", _labels(result)
    loaded = _run_fix(top.fix_code, Blocks(), path)  # loads strictly, as printed
    assert torch.equal(loaded.state_dict()["out.weight"], saved[saved_key.partition(".")[0] + ".out.weight"])
