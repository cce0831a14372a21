"""Size readings too thin to decide, found while tuning on frozen8/ (#16).

frozen8's three confident wrong answers were size readings of one tensor each
(``ckpttools/ops/diagnose/thin_shapes.py``): a region-proposal layer's rows read as classes, an
inference model's 0-output head read as the cause beside a module that moved, one more input
feature of a Linear read as another width. Every text here is the error a real
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
from tests.ops.diagnose.scoring import rules_first


# -- a region-proposal network with another anchor count (fasterrcnn125) ----------------------

class TwoStage(nn.Module):
    """A two-stage detector's layout: a proposal network scoring anchors, a box head scoring classes."""

    def __init__(self, anchors: int = 9, classes: int = 21) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 16, 3)
        self.rpn = nn.ModuleDict({"conv": nn.Conv2d(16, 16, 3), "cls_score": nn.Conv2d(16, 2 * anchors, 1),
                                  "bbox_pred": nn.Conv2d(16, 4 * anchors, 1)})
        self.cls_score = nn.Linear(16, classes)


def test_a_proposal_networks_other_anchor_count_is_no_decided_class_count(tmp_path: Path) -> None:
    saved = TwoStage(anchors=12).state_dict()  # 4 scales x 3 ratios against 3 x 3
    path = tmp_path / "rpn.pth"
    torch.save(saved, path)
    text = load_error(TwoStage(anchors=9), torch.load(path, weights_only=True))
    assert "size mismatch for rpn.cls_score.weight" in text
    result = diagnose_text(text)
    assert not result.decided, _labels(result)
    assert result.to_dict()["decide_with"] == DECIDE_COMMAND
    top = result.causes[0]
    assert top.label == "architecture_variant" and "anchor" in top.summary
    head = next(c for c in result.causes if c.label == "head_size_mismatch")
    assert head.evidence["facts"]["thin"] == "a proposal network's outputs count anchors, not classes"
    # the head candidate's printed fix (drop those layers) runs and loads everything else
    loaded = _run_fix(head.fix_code, TwoStage(anchors=9), path)
    assert torch.equal(loaded.state_dict()["backbone.weight"], saved["backbone.weight"])
    assert torch.equal(loaded.state_dict()["rpn.conv.weight"], saved["rpn.conv.weight"])


def test_the_box_heads_class_count_still_decides() -> None:
    result = diagnose_text(load_error(TwoStage(classes=21), TwoStage(classes=81).state_dict()))
    assert result.decided and result.causes[0].label == "head_size_mismatch", _labels(result)


# -- a model built without the head (0 outputs) beside a module that moved (fastreid427) -------

class ReidHead(nn.Module):
    def __init__(self, classes: int, old: bool) -> None:
        super().__init__()
        if old:  # the older code's name for the neck
            self.bnneck = nn.BatchNorm1d(16)
        else:
            self.bottleneck = nn.Sequential(nn.BatchNorm1d(16))
        self.classifier = nn.Linear(16, classes, bias=False)


class Reid(nn.Module):
    def __init__(self, classes: int, old: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Linear(8, 16)
        self.heads = ReidHead(classes, old)


_ZERO_INIT = "ignore:Initializing zero-element tensors is a no-op:UserWarning"


@pytest.mark.filterwarnings(_ZERO_INIT)
def test_a_zero_output_head_beside_other_failing_keys_is_no_decided_head(tmp_path: Path) -> None:
    saved = Reid(751, old=True).state_dict()
    path = tmp_path / "reid.pth"
    torch.save(saved, path)
    text = load_error(Reid(0), torch.load(path, weights_only=True))
    assert "heads.bnneck.weight" in text and "torch.Size([0, 16])" in text
    result = diagnose_text(text)
    assert not result.decided, _labels(result)
    head = next(c for c in result.causes if c.label == "head_size_mismatch")
    assert head.evidence["facts"]["thin"].startswith("the model has no such head (0 outputs)")
    assert result.causes[0].label != "head_size_mismatch"
    # the top candidate's printed fix runs on the real model and loads what both layouts share
    loaded = _run_fix(result.causes[0].fix_code, Reid(0), path)
    assert torch.equal(loaded.state_dict()["backbone.weight"], saved["backbone.weight"])


@pytest.mark.filterwarnings(_ZERO_INIT)
def test_a_zero_output_head_alone_still_decides() -> None:
    result = diagnose_text(load_error(Reid(0), Reid(527).state_dict()))
    assert result.decided and result.causes[0].label == "head_size_mismatch", _labels(result)


# -- one more input feature of a single Linear (mmdet3d1339) -----------------------------------

class PointEncoder(nn.Module):
    def __init__(self, features: int, hidden: int = 64) -> None:
        super().__init__()
        self.pfn = nn.Sequential(nn.Linear(features, hidden, bias=False), nn.Linear(hidden, 4))


def test_one_linears_input_features_are_no_decided_width() -> None:
    text = load_error(PointEncoder(10), PointEncoder(9).state_dict())
    assert text.count("size mismatch") == 1
    result = diagnose_text(text)
    assert not result.decided, _labels(result)
    top = result.causes[0]
    assert top.label == "architecture_variant"
    assert top.evidence["facts"]["thin"].startswith("one layer's input features")
    code = next(c for c in result.causes if c.label == "model_code_changed")
    assert "reads 9 features in the checkpoint and 10 in the model" in code.summary


def test_a_hidden_width_on_both_sides_still_decides() -> None:
    text = load_error(PointEncoder(10, hidden=64), PointEncoder(10, hidden=96).state_dict())
    result = diagnose_text(text)  # decided by the rules; the report bounds it (test_reliability.py)
    assert rules_first(text).confidence >= 0.8
    assert result.causes[0].label == "architecture_variant", _labels(result)


# -- the size-mismatch sentence without its key (an issue title cut to its length: srn8) -------

class Recognizer(nn.Module):
    def __init__(self, charset: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(32, 512)
        self.char_embedding = nn.Embedding(charset, 512)


def test_a_keyless_size_sentence_whose_rows_differ_is_a_head_candidate() -> None:
    text = load_error(Recognizer(39), Recognizer(38).state_dict())
    title = text[text.index("copying a param"):].split("\n")[0]  # what the title kept
    assert "char_embedding" not in title and "[38, 512]" in title
    result = diagnose_text(title)
    assert result.found and not result.decided, _labels(result)
    top = result.causes[0]
    assert top.label == "head_size_mismatch" and "38 in the checkpoint, 39 in the model" in top.summary


def test_a_keyless_size_sentence_of_another_width_is_no_head() -> None:
    text = load_error(nn.Sequential(nn.Linear(32, 64)), nn.Sequential(nn.Linear(48, 64)).state_dict())
    title = text[text.index("copying a param"):].split("\n")[0]
    assert all(c.label != "head_size_mismatch" for c in diagnose_text(title).causes)


# -- a loader's {'missed': [...], 'unmatched': [...]} dict (rtdetr367) --------------------------

class Detr(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 16, 3)
        self.decoder = nn.Module()
        self.decoder.denoising_class_embed = nn.Embedding(classes + 1, 16)
        self.decoder.enc_score_head = nn.Linear(16, classes)
        self.decoder.dec_score_head = nn.ModuleList(nn.Linear(16, classes) for _ in range(2))


def _match_state_dict(model_state: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> str:
    """What RT-DETR's loader prints: the model's keys the file lacks, and those of other shapes."""
    missed = [k for k in model_state if k not in params]
    unmatched = [k for k in model_state if k in params and params[k].shape != model_state[k].shape]
    return f"Load model.state_dict, {{'missed': {missed}, 'unmatched': {unmatched}}}"


def test_a_loaders_unmatched_keys_are_size_mismatches_of_a_head(tmp_path: Path) -> None:
    saved = Detr(80).state_dict()
    path = tmp_path / "rtdetr.pth"
    torch.save(saved, path)
    text = _match_state_dict(Detr(4).state_dict(), torch.load(path, weights_only=True))
    assert "'unmatched': ['decoder.denoising_class_embed.weight'" in text
    result = diagnose_text(text)
    assert not result.decided, _labels(result)
    top = result.causes[0]
    assert top.label == "head_size_mismatch" and r"decoder\.enc_score_head" in top.fix_code
    loaded = _run_fix(top.fix_code, Detr(4), path)  # drops the class-sized layers, loads the rest
    assert torch.equal(loaded.state_dict()["backbone.weight"], saved["backbone.weight"])


# -- a numbered position table (pos1_embedding: 2 x max_length rows, opennre315) ---------------

class RelationEncoder(nn.Module):
    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(100, 8)
        self.pos1_embedding = nn.Embedding(2 * max_length, 5)
        self.pos2_embedding = nn.Embedding(2 * max_length, 5)


def test_a_numbered_position_tables_rows_are_another_length_not_classes() -> None:
    result = diagnose_text(load_error(RelationEncoder(128), RelationEncoder(80).state_dict()))
    assert result.decided, _labels(result)
    top = result.causes[0]
    assert top.label == "architecture_variant" and "another input length" in top.summary
    assert all(c.label != "head_size_mismatch" for c in result.causes)
