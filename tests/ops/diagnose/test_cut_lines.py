"""Size-mismatch lines that reach ``diagnose`` cut (#16, round 9): a title or paste that ends inside
the shapes, a paste that starts at the key, and tensors whose shape (not their elements) changed.
Every text is a real ``load_state_dict`` error of real modules, cut the way users paste."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDED, diagnose_text
from tests.ops.diagnose.generated_corpus import load_error


class WindowAttention(nn.Module):
    """Swin V2's continuous position bias: a log-spaced table of relative coordinates per window."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.register_buffer("relative_coordinates_log", torch.zeros((2 * window - 1) ** 2, 2))
        self.qkv = nn.Linear(8, 24)


class SwinBlock(nn.Module):
    def __init__(self, window: int) -> None:
        super().__init__()
        self.window_attention = WindowAttention(window)


def _from_key(text: str) -> str:
    """The paste starts at the first mismatch's key ("size mismatch for" cut off the front)."""
    return text[text.index("size mismatch for ") + len("size mismatch for "):]


def test_a_paste_starting_at_the_key_is_parsed_and_a_coordinate_table_is_a_variant() -> None:
    text = _from_key(load_error(SwinBlock(8), SwinBlock(16).state_dict()))
    assert text.startswith("window_attention.relative_coordinates_log: copying a param")
    result = diagnose_text(text)
    assert result.evidence.truncated  # what came before the key was cut
    cause = result.causes[0]
    assert (cause.label, cause.evidence["facts"]["kind"]) == ("architecture_variant", "pos_grid")


class Int8Linear(nn.Module):
    """gpt-fast/torchchat weight-only int8: an int8 weight and per-channel or per-group scales."""

    def __init__(self, rows: int, cols: int, groups: int = 0) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(rows, cols, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(rows, groups) if groups else torch.ones(rows))


class Attention(nn.Module):
    def __init__(self, groups: int = 0) -> None:
        super().__init__()
        self.wqkv, self.wo = Int8Linear(24, 8, groups), Int8Linear(8, 8, groups)


def test_groupwise_quantization_scales_are_quantization_state() -> None:
    text = load_error(Attention(), Attention(groups=4).state_dict())
    cause = diagnose_text(text).causes[0]
    assert cause.label == "adapter_or_quantization" and cause.evidence["facts"]["quantized"]
    assert cause.fix_code == ""  # the quantization library and config are not in the text


class Classifier(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, classes))


def _cut_in_shape(text: str) -> str:
    """A title or a paste that ends inside the first mismatch's checkpoint shape."""
    m = re.search(r"size mismatch for [^:]+: copying a param with shape torch\.Size\(\[\d*", text)
    assert m is not None
    return text[:m.end()]


@pytest.mark.parametrize(("model", "other", "label"), [
    (Classifier(10), Classifier(1000), "head_size_mismatch"),
    (SwinBlock(8), SwinBlock(16), "architecture_variant"),
])
def test_a_line_cut_inside_its_shapes_names_a_candidate_by_the_key(
        model: nn.Module, other: nn.Module, label: str) -> None:
    result = diagnose_text(_cut_in_shape(load_error(model, other.state_dict())))
    assert result.found and result.causes[0].label == label
    assert not result.decided  # only the key is left: the sizes decide, and they are cut


class Clip(nn.Module):
    def __init__(self, scalar: bool) -> None:
        super().__init__()
        self.visual = nn.Linear(4, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0) if scalar else torch.tensor([2.0]))


def test_a_scalar_saved_as_one_element_is_a_reshape() -> None:
    text = load_error(Clip(scalar=False), Clip(scalar=True).state_dict())
    cause = diagnose_text(text).causes[0]
    assert cause.label == "model_code_changed" and cause.confidence < DECIDED
    assert 'sd["logit_scale"] = sd["logit_scale"].reshape([1])' in cause.fix_code


class VaeAttention(nn.Module):
    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(2, 8)
        for name in names:
            self.add_module(name, nn.Conv2d(8, 8, 1))


class Vae(nn.Module):
    """An LDM VAE's mid attention, with the projection names of one diffusers version or another."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        for part in ("encoder", "decoder"):
            mid = nn.Module()
            mid.block_1, mid.attn_1 = nn.Conv2d(8, 8, 3), VaeAttention(names)
            side = nn.Module()
            side.conv_in, side.mid = nn.Conv2d(3, 8, 3), mid
            self.add_module(part, side)


def test_attention_projections_alone_missing_read_as_renamed_not_the_whole_model() -> None:
    # ComfyUI prints the missing VAE keys only: q/k/v/proj_out, where the file has query/key/...
    old, new = ("q", "k", "v", "proj_out"), ("query", "key", "value", "proj_attn")
    text = "\n".join(line for line in load_error(Vae(old), Vae(new).state_dict()).split("\n")
                     if "Unexpected" not in line)
    result = diagnose_text(text)
    assert [c.label for c in result.causes[:2]] == ["renamed_keys", "fused_projection"]
    assert not result.decided and result.causes[0].fix_code == ""  # the file's names are not shown


class Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(4, 4), nn.Linear(4, 4)


def test_top_level_entries_of_an_unknown_container_are_a_wrapped_checkpoint() -> None:
    # fairseq2-style: {"_model": state_dict, "model_key": "..."}; torch names the nested dict by
    # its top-level key, and the model's keys (which have dots) are all missing
    wrapped = {"_model": Seq2Seq().state_dict(), "model_key": "decoder"}
    cause = diagnose_text(load_error(Seq2Seq(), wrapped)).causes[0]
    assert (cause.label, cause.evidence["facts"]["container"]) == ("wrapped_checkpoint", "_model")
    assert cause.confidence < DECIDED
