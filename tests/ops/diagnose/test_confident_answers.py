"""Relations that kept ``diagnose`` from answering confidently and wrongly (#16, round 9).

Each case builds real models, takes the real ``load_state_dict`` error and pastes it the way
users do (whole, or the first lines). The answers either name the right cause or stay below the
decision threshold (0.8) with candidates.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDED, diagnose_text
from tests.ops.diagnose.generated_corpus import load_error


class Block(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner)
        self.conv2, self.bn2 = nn.Conv2d(inner, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)


class ResNetCifar(nn.Module):
    """A CIFAR ResNet whose first block's inner width can be thinned (channel pruning)."""

    def __init__(self, inner: int = 16) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Block(16, inner), Block(16, 16))
        self.fc = nn.Linear(16, 10)


def _first_lines(text: str, n: int) -> str:
    """The header and the first ``n`` mismatch lines (a shortened paste)."""
    lines = text.split("\n")
    return "\n".join(lines[: n + 1])


def test_a_thinned_inner_conv_and_its_norm_are_a_width_not_a_head() -> None:
    text = _first_lines(load_error(ResNetCifar(16), ResNetCifar(11).state_dict()), 4)
    assert "layer1.0.bn1.running_mean" in text  # the conv and its BatchNorm changed together
    causes = diagnose_text(text).causes
    assert causes[0].label == "architecture_variant" and causes[0].confidence < DECIDED
    assert all(c.confidence < DECIDED for c in causes if c.label == "head_size_mismatch")


def test_a_classifier_weight_and_bias_are_still_a_head() -> None:
    model, other = ResNetCifar(), ResNetCifar()
    other.fc = nn.Linear(16, 100)
    cause = diagnose_text(load_error(model, other.state_dict())).causes[0]
    assert cause.label == "head_size_mismatch" and cause.confidence >= DECIDED


class YoloHead(nn.Module):
    """A multi-level detection head: per level a 1x1 prediction conv with anchors x (classes + 5)
    outputs and an implicit term, at three input widths."""

    def __init__(self, classes: int, anchors: int = 3) -> None:
        super().__init__()
        out = anchors * (classes + 5)
        self.convs_pred = nn.ModuleList(
            nn.Sequential(nn.Identity(), nn.Conv2d(w, out, 1), _Implicit(out)) for w in (16, 32, 64))


class _Implicit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channels, 1, 1))


class YoloDetector(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 16, 3)
        self.bbox_head = YoloHead(classes)


def test_a_multi_level_detection_head_of_another_class_count_is_a_head() -> None:
    # 9 tensors change between the same two sizes (255 -> 18) in the bbox_head, at three input
    # widths: the classes changed; a width would change the input axis of the layers after it
    text = load_error(YoloDetector(1), YoloDetector(80).state_dict())
    cause = diagnose_text(text).causes[0]
    assert cause.label == "head_size_mismatch" and cause.confidence >= DECIDED
    assert (cause.evidence["facts"]["checkpoint_size"], cause.evidence["facts"]["model_size"]) == (255, 18)


class Transformer(nn.Module):
    def __init__(self, kv: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"wq": nn.Linear(64, 64), "wk": nn.Linear(64, kv)})
                                    for _ in range(8))


def test_fewer_key_value_heads_in_every_block_is_not_a_head() -> None:
    text = load_error(Transformer(16), Transformer(64).state_dict())
    causes = diagnose_text(text).causes
    assert all(c.confidence < DECIDED for c in causes if c.label == "head_size_mismatch")


class Usm(nn.Module):
    def __init__(self, norm_act: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        if norm_act:
            self.norm_act = nn.BatchNorm2d(8)


class Segmenter(nn.Module):
    def __init__(self, norm_act: bool = True) -> None:
        super().__init__()
        self.stem, self.usm, self.head = nn.Conv2d(3, 8, 3), Usm(norm_act), nn.Conv2d(8, 19, 1)


def _missing_only(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if "Unexpected key(s)" not in line)


def test_a_new_module_of_a_dataparallel_model_is_not_a_prefix() -> None:
    # the message names DataParallel, so every model key carries module.: the four missing keys
    # of one module say the code has a module the file was saved without
    old = nn.DataParallel(Segmenter(norm_act=False)).state_dict()
    text = load_error(nn.DataParallel(Segmenter()), old)
    assert "DataParallel" in text and "module.usm.norm_act.running_mean" in text
    causes = diagnose_text(text).causes
    assert causes[0].label == "model_code_changed"
    assert all(c.confidence < DECIDED for c in causes if c.label.startswith("prefix"))


def test_a_dataparallel_model_missing_every_module_is_still_a_prefix() -> None:
    text = _missing_only(load_error(nn.DataParallel(Segmenter()), Segmenter().state_dict()))
    cause = diagnose_text(text).causes[0]
    assert cause.label == "prefix_missing" and cause.confidence >= DECIDED


class LightCnn(nn.Module):
    """Two variants: v2 keeps its fc in a ``filter`` submodule and fc2 has no bias."""

    def __init__(self, v2: bool, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Sequential() if v2 else nn.Linear(8, 16)
        if v2:
            self.fc.add_module("filter", nn.Linear(8, 16))
        self.fc2 = nn.Linear(16, classes, bias=v2)


def test_moved_modules_beside_another_layers_size_stay_undecided() -> None:
    text = load_error(nn.DataParallel(LightCnn(True, 79)), nn.DataParallel(LightCnn(False, 80)).state_dict())
    causes = diagnose_text(text).causes
    assert causes[0].confidence < DECIDED, [(c.label, c.confidence) for c in causes]
