"""Readings found while tuning on frozen10/ (#16).

frozen10's four confident wrong answers, each a relation of shapes and keys that holds for every
model: one output layer per feature level whose rows stand in one ratio (a class count, not a
width), a table and an output layer of sizes no one count gives (two settings, not a vocabulary),
a matrix of another kind at its path (``ckpttools/ops/diagnose/layer_roles.py``) and size
mismatches inside modules that moved along a stack (the code changed, not a width). Then its
misses: layers widened by one concatenated part, a size wrapped inside a number, a mismatch line
retyped without its colon, a deeper stack under a part's name, a module named in bold, BatchNorm
layers on one side only. Every text here is the error a real ``load_state_dict`` raises (or the
reporter's words around it); every printed fix is run on a copy of the real model and its file,
and the readings that print none are checked to print none.
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


# -- SSD's confidence layers, one per feature level (bidet37) ------------------------------------

class SSD(nn.Module):
    """An SSD head: per level, a 3x3 conv scoring anchors x classes over that level's features."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.base = nn.Conv2d(3, 16, 3)
        widths, anchors = (16, 32, 16, 8, 8, 8), (4, 6, 6, 6, 4, 4)
        self.loc = nn.ModuleList([nn.Conv2d(w, a * 4, 3, padding=1) for w, a in zip(widths, anchors)])
        self.conf = nn.ModuleList([nn.Conv2d(w, a * classes, 3, padding=1)
                                   for w, a in zip(widths, anchors)])


def test_each_levels_output_rows_in_one_ratio_are_a_class_count(tmp_path: Path) -> None:
    saved = SSD(21).state_dict()  # VOC
    path = tmp_path / "ssd_voc.pth"
    torch.save(saved, path)
    text = load_error(SSD(81), torch.load(path, weights_only=True))  # built for COCO
    assert "torch.Size([84, 16, 3, 3]) from checkpoint" in text and "conf.5.bias" in text
    result = diagnose_text(text)
    assert result.decided and result.causes[0].label == "head_size_mismatch", _labels(result)
    assert "number of classes" in result.causes[0].summary
    assert not any(c.label == "architecture_variant" for c in result.causes), _labels(result)
    loaded = _run_fix(result.causes[0].fix_code, SSD(81), path)  # drops the heads, loads the rest
    assert torch.equal(loaded.state_dict()["loc.1.weight"], saved["loc.1.weight"])


def test_levels_that_all_change_between_the_same_two_widths_are_no_such_count() -> None:
    # the rows of every level in one ratio, but one pair of sizes: a width reads the same
    class Lateral(nn.Module):
        def __init__(self, out: int) -> None:
            super().__init__()
            self.lateral = nn.ModuleList([nn.Conv2d(w, out, 1) for w in (8, 16, 32, 64)])

    result = diagnose_text(load_error(Lateral(16), Lateral(32).state_dict()))
    assert not (result.decided and result.causes[0].label == "head_size_mismatch"), _labels(result)


# -- a symbol table beside a spectrogram output (gsttacotron14) ----------------------------------

class Decoder(nn.Module):
    def __init__(self, bins: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, bins)


class Tacotron(nn.Module):
    """A symbol table and a decoder whose last layer writes n_fft // 2 + 1 spectrogram bins."""

    def __init__(self, symbols: int, n_fft: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(symbols, 16)
        self.decoder = Decoder(n_fft // 2 + 1)


def test_a_table_and_an_output_layer_of_unrelated_sizes_are_two_settings() -> None:
    text = load_error(Tacotron(32, 64), Tacotron(36, 128).state_dict())
    assert "size mismatch for decoder.fc2.bias" in text and "torch.Size([36, 16])" in text
    result = diagnose_text(text)
    assert not result.decided, _labels(result)
    assert result.to_dict()["decide_with"] == DECIDE_COMMAND
    assert [c.label for c in result.causes[:2]] == ["architecture_variant", "head_size_mismatch"]
    top = result.causes[0]
    assert "decoder.fc2.weight: 65 in the checkpoint, 33 in the model" in top.summary
    assert top.fix_code == ""  # the settings are the user's to set: words and the deciding command


def test_the_vocabulary_candidates_fix_takes_every_rows_only_size_of_the_file(tmp_path: Path) -> None:
    saved = Tacotron(36, 128).state_dict()
    path = tmp_path / "epoch100.pt"
    torch.save(saved, path)
    result = diagnose_text(load_error(Tacotron(32, 64), torch.load(path, weights_only=True)))
    head = result.causes[1]
    assert head.label == "head_size_mismatch", _labels(result)
    loaded = _run_fix(head.fix_code, Tacotron(32, 64), path)  # the table and the output layer resized
    assert torch.equal(loaded.state_dict()["decoder.fc2.weight"], saved["decoder.fc2.weight"])


@pytest.mark.parametrize("model", [Tacotron(32, 128), Tacotron(36, 64)], ids=["table", "output"])
def test_one_count_changed_alone_is_still_a_head(model: Tacotron) -> None:
    result = diagnose_text(load_error(model, Tacotron(36, 128).state_dict()))
    assert result.causes[0].label == "head_size_mismatch", _labels(result)
    assert not any(c.evidence["facts"].get("kind") == "config" for c in result.causes), _labels(result)


def test_two_heads_of_one_class_count_still_decide() -> None:
    # a classifier (classes + 1) beside its box regressor (4 x classes): one count, whatever the pairs
    class Predictor(nn.Module):
        def __init__(self, classes: int) -> None:
            super().__init__()
            self.cls_score = nn.Linear(16, classes + 1)
            self.bbox_pred = nn.Linear(16, 4 * classes)

    result = diagnose_text(load_error(Predictor(3), Predictor(80).state_dict()))
    assert result.decided and result.causes[0].label == "head_size_mismatch", _labels(result)


# -- a matrix of another kind at the same path (mozillatts276) -----------------------------------

class Frontend(nn.Module):
    """``embedding``: a table of symbols in the old code, a layer reading spectrogram bins in the new."""

    def __init__(self, table: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(61, 16) if table else nn.Linear(33, 16, bias=False)
        self.encoder = nn.Linear(16, 16)


def test_a_matrix_read_the_other_way_is_a_code_change_first() -> None:
    text = load_error(Frontend(table=False), Frontend(table=True).state_dict())
    assert "torch.Size([61, 16]) from checkpoint" in text and "torch.Size([16, 33])" in text
    result = diagnose_text(text)
    assert not result.decided, _labels(result)
    assert [c.label for c in result.causes[:2]] == ["model_code_changed", "architecture_variant"]
    assert "another kind of layer at embedding.weight" in result.causes[0].summary
    assert result.causes[0].fix_code == ""  # the code version is the user's to pick: words only


def test_a_matrix_scaled_alike_on_both_axes_is_still_a_width() -> None:
    # [32, 16] against [16, 8]: the model's rows are the checkpoint's inputs, both axes halved
    saved = nn.Sequential(nn.Linear(16, 32)).state_dict()
    result = diagnose_text(load_error(nn.Sequential(nn.Linear(8, 16)), saved))
    assert result.causes[0].label == "architecture_variant", _labels(result)
    assert not any(c.label == "model_code_changed" for c in result.causes), _labels(result)


# -- a stage's downsample moved to the next stage (depthmap2mask60) ------------------------------

class Merge(nn.Module):
    """Swin's patch merging: 4 C features into 2 C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)


class Stage(nn.Module):
    def __init__(self, dim: int, merge: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(dim, dim) for _ in range(2)])
        if merge is not None:
            self.downsample = Merge(merge)


class Swin(nn.Module):
    """Stages of width 8, 16, 32, 64; the old code merges at the end of a stage, the new at the
    start of the next (timm 0.6 against 0.9)."""

    def __init__(self, merge_first: bool) -> None:
        super().__init__()
        dims = (8, 16, 32, 64)
        self.layers = nn.ModuleList([
            Stage(d, (dims[i - 1] if i else None) if merge_first else (d if i < 3 else None))
            for i, d in enumerate(dims)])


def test_sizes_inside_modules_that_moved_along_a_stack_are_the_move(tmp_path: Path) -> None:
    saved = Swin(merge_first=False).state_dict()
    path = tmp_path / "swin.pth"
    torch.save(saved, path)
    text = load_error(Swin(merge_first=True), torch.load(path, weights_only=True))
    assert '"layers.3.downsample.reduction.weight"' in text and '"layers.0.downsample.norm.bias"' in text
    assert "size mismatch for layers.1.downsample.reduction.weight" in text
    result = diagnose_text(text)
    assert result.causes[0].label == "model_code_changed", _labels(result)
    assert rules_first(text).confidence >= 0.8  # the rules decide; the report bounds it
    width = next(c for c in result.causes if c.label == "architecture_variant")
    assert width.confidence < 0.8
    loaded = _run_fix(result.causes[0].fix_code, Swin(merge_first=True), path)  # loads what fits
    assert torch.equal(loaded.state_dict()["layers.2.blocks.1.weight"], saved["layers.2.blocks.1.weight"])


def test_a_width_beside_a_module_that_moved_elsewhere_is_still_read() -> None:
    # the sizes sit in modules that did not move: the move does not explain them
    class Net(nn.Module):
        def __init__(self, width: int, name: str) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, width), nn.Linear(width, 8)])
            setattr(self, name, nn.ModuleList([nn.Identity(), nn.Linear(8, 8)]))

    result = diagnose_text(load_error(Net(16, "head"), Net(32, "neck").state_dict()))
    assert any(c.label == "architecture_variant" and c.confidence >= 0.6
               for c in result.causes), _labels(result)


# -- one part concatenated to several layers' inputs (mockingbird253, a line wrapped in a size) ----

class Synth(nn.Module):
    """Layers that read the encoder's output concatenated with a speaker embedding of ``speaker``
    features (older code: none)."""

    def __init__(self, speaker: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 32)
        self.encoder_proj = nn.Linear(32 + speaker, 16)
        self.attn_rnn = nn.GRUCell(48 + speaker, 24)
        self.stop_proj = nn.Linear(96 + speaker, 1)


def _wrap_inside_a_size(text: str, size: str) -> str:
    """The paste as a terminal wrapped it: a line break after the first digit of that size."""
    at = text.index(f"torch.Size([{size}") + len("torch.Size([") + 1
    return text[:at] + "\n" + text[at:]


def test_layers_widened_by_one_part_are_a_width_or_the_code_a_candidate(tmp_path: Path) -> None:
    text = _wrap_inside_a_size(load_error(Synth(16), Synth(0).state_dict()), "16, 32")
    assert "torch.Size([1\n6, 32])" in text
    result = diagnose_text(text)
    mismatched = {m["key"]: m for m in result.to_dict()["mismatched"]}
    assert mismatched["encoder_proj.weight"]["checkpoint_shape"] == [16, 32]  # read across the break
    assert not result.decided, _labels(result)
    assert [c.label for c in result.causes[:2]] == ["architecture_variant", "model_code_changed"]
    assert "reads 32 features in the checkpoint and 48" in result.causes[1].summary
    assert [c.fix_code for c in result.causes[:2]] == ["", ""]  # settings and versions: words only


def test_layers_widened_by_their_own_factor_are_still_a_width() -> None:
    class Wide(nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.a = nn.Linear(8 * k, 8)
            self.b = nn.Linear(16 * k, 8)

    text = load_error(Wide(2), Wide(1).state_dict())
    first = rules_first(text)
    assert first.label == "architecture_variant" and first.confidence >= 0.8, _labels(diagnose_text(text))


# -- BN-Inception's [1, C] norms, the message retyped by hand (tsn104) --------------------------

class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1_7x7_s2 = nn.Conv2d(3, 8, 7)
        self.conv1_7x7_s2_bn = nn.BatchNorm2d(8)


def test_a_retyped_mismatch_line_without_its_colon_is_read(tmp_path: Path) -> None:
    saved = {k: (v.unsqueeze(0) if k.endswith("bn.weight") else v) for k, v in Stem().state_dict().items()}
    path = tmp_path / "bn_inception.pth"
    torch.save(saved, path)
    text = load_error(Stem(), torch.load(path, weights_only=True))
    line = next(x for x in text.splitlines() if "size mismatch for" in x).strip()
    retyped = ("Runtime error " + line.replace(": copying a param with shape torch",
                                               " copying a param with shape for torch"))
    assert "conv1_7x7_s2_bn.weight copying a param with shape for torch.Size([1, 8])" in retyped
    result = diagnose_text(retyped)
    top = result.causes[0]
    assert top.label == "model_code_changed" and not result.decided, _labels(result)
    loaded = _run_fix(top.fix_code, Stem(), path)  # reshapes [1, 8] into [8] and loads
    assert torch.equal(loaded.state_dict()["conv1_7x7_s2_bn.weight"], saved["conv1_7x7_s2_bn.weight"][0])


# -- a deeper encoder under a part's name (dav2_90, frozen9's sam69) -----------------------------

class Encoder(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, 4)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(depth)])


class DepthModel(nn.Module):
    """Depth-Anything's layout: the encoder under ``pretrained``, a depth head after it."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.pretrained = Encoder(depth)
        self.depth_head = nn.Linear(8, 1)


def test_a_missing_list_led_by_a_later_layer_of_a_part_is_another_depth() -> None:
    text = load_error(DepthModel(4), DepthModel(2).state_dict())
    assert 'Missing key(s) in state_dict: "pretrained.blocks.2.0.weight"' in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "architecture_variant" and "depth" in top.summary, _labels(result)
    assert not any(c.label == "wrong_model" for c in result.causes), _labels(result)


def test_a_missing_list_led_by_a_parts_first_layer_is_still_that_parts_file() -> None:
    # nothing of the model in the file: the list starts at the part's first key
    result = diagnose_text(load_error(DepthModel(2), {}))
    assert not result.decided and "wrong_model" in [c.label for c in result.causes], _labels(result)
    assert not any(c.label == "architecture_variant" for c in result.causes), _labels(result)


# -- a module named in bold, its sizes not pasted (detr3d62) -------------------------------------

class Pillars(nn.Module):
    """PointPillars' layout: a voxel encoder over ``features`` point features, then a backbone."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.pts_voxel_encoder = nn.Sequential(nn.Linear(features, 16), nn.LayerNorm(16))
        self.pts_backbone = nn.Linear(16, 16)


def test_a_module_named_in_bold_without_sizes_lists_the_candidates(tmp_path: Path) -> None:
    saved = Pillars(10).state_dict()
    path = tmp_path / "pillar.pth"
    torch.save(saved, path)
    text = load_error(Pillars(9), torch.load(path, weights_only=True))
    module = text.split("size mismatch for ")[1].split(".")[0]
    assert module == "pts_voxel_encoder"
    report = ("When I loaded the pillar.pth from the training step, it gives a warning as follows:\n\n"
              f"**size mismatch for {module}**\nHowever, I was applying the pillar.py configuration.\n")
    result = diagnose_text(report)
    assert result.found and not result.decided, _labels(result)
    assert [c.label for c in result.causes] == ["architecture_variant", "model_code_changed",
                                                "head_size_mismatch"]
    assert "version the checkpoint was saved with" in result.causes[1].summary
    loaded = _run_fix(result.causes[2].fix_code, Pillars(9), path)  # the module left out, the rest loads
    assert torch.equal(loaded.state_dict()["pts_backbone.weight"], saved["pts_backbone.weight"])


# -- BatchNorm layers across the network on the model's side only (raft121) ----------------------

class Residual(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)
        self.norm1 = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.norm2 = nn.BatchNorm2d(8) if norm else nn.Identity()


class FlowEncoder(nn.Module):
    """RAFT's context encoder: ``norm_fn='batch'`` for the full model, ``'none'`` for the small one."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7)
        self.norm1 = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.layer1 = nn.Sequential(Residual(norm), Residual(norm))


class Flow(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.cnet = FlowEncoder(norm)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "dataparallel"])
def test_norm_layers_across_the_network_on_one_side_are_a_norm_setting(wrapped: bool) -> None:
    model, saved = Flow(norm=True), Flow(norm=False)
    if wrapped:
        model, saved = nn.DataParallel(model), nn.DataParallel(saved)
    text = load_error(model, saved.state_dict())
    assert "cnet.layer1.1.norm2.running_var" in text and "Unexpected" not in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert not result.decided and top.label == "architecture_variant", _labels(result)
    assert "norm setting" in top.summary and top.fix_code == ""


def test_one_modules_norm_on_one_side_is_not_a_norm_setting() -> None:
    class Head(nn.Module):
        def __init__(self, norm: bool) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)
            self.norm_act = nn.BatchNorm2d(8) if norm else nn.Identity()

    result = diagnose_text(load_error(Head(True), Head(False).state_dict()))
    assert not any("norm setting" in c.summary for c in result.causes), _labels(result)
