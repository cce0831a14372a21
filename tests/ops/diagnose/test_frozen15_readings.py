"""Readings found while tuning on frozen15/ and frozen16/ (#16).

A kernel whose output and input channels trade places while its kernel axes stay is another layer
(one that maps the other way, or a transposed convolution where a convolution was), not a kernel
layout to permute: a layout of another library moves the kernel axes too. A paste cut at both ends
shows the end of one key list and the start of the other, so no key pairs across them; every key
shown on one side under a wrapper's prefix (``module.``) and none on the other is still the wrapper
first, another model wrapped alike below it. Every text here is the error a real
``load_state_dict`` raises between two real modules; the printed fix is run on a copy of the model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.printed import labels as _labels, run_fix as _run_fix


# -- a kernel whose channels swapped: the code builds the layer the other way round -------------

class Neck(nn.Module):
    def __init__(self, down: nn.Module) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.down = down


def test_a_kernel_with_its_channels_swapped_is_another_layer_not_a_layout() -> None:
    # the file's layer maps 24 -> 8 channels, the model's 8 -> 24 (a 1x1 conv reversed)
    text = load_error(Neck(nn.Conv2d(8, 24, 1)), Neck(nn.Conv2d(24, 8, 1)).state_dict())
    assert "torch.Size([8, 24, 1, 1]) from checkpoint" in text
    result = diagnose_text(text)
    labels = [label for label, _ in _labels(result)]
    assert labels[0] == "model_code_changed" and "transposed_weights" in labels
    assert not result.decided
    assert result.causes[0].fix_code == ""  # words: the code version, no permute
    assert "other way round" in result.causes[0].summary


def test_a_transposed_convolution_where_a_convolution_was_reads_the_same() -> None:
    # ConvTranspose2d stores (in, out, k, k), Conv2d (out, in, k, k): the same channels, swapped
    text = load_error(Neck(nn.Conv2d(8, 16, 4)), Neck(nn.ConvTranspose2d(8, 16, 4)).state_dict())
    result = diagnose_text(text)
    assert result.causes[0].label == "model_code_changed" and not result.decided


class Layout(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(torch.zeros(shape))


def test_a_kernel_layout_that_moves_the_kernel_axes_is_still_a_permute() -> None:
    # spconv's (out, k, k, k, in) against (out, in, k, k, k): the kernel axes move
    result = diagnose_text(load_error(Layout((16, 3, 3, 3, 4)), Layout((16, 4, 3, 3, 3)).state_dict()))
    assert result.causes[0].label == "transposed_weights" and result.decided


# -- a paste cut at both ends: one side's keys under module., the other's bare -------------------

class Stereo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.cost = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.classif = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 3))


def _cut(text: str, first: str, last: str) -> str:
    """The paste of a scrolled terminal: from inside ``first`` (a key) up to the key ``last``."""
    return text[text.index(first) + first.rindex("."):text.index(f'"{last}"')]


def test_a_cut_paste_with_the_wrapper_on_the_model_side_alone_reads_the_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "stereo.pth"
    torch.save(Stereo().state_dict(), path)  # saved from the bare model
    model = nn.DataParallel(Stereo())  # wrapped before loading
    text = _cut(load_error(model, torch.load(path)), "module.cost.3.running_var", "cost.0.weight")
    assert text.startswith('.running_var", "module.classif.0.weight"') and '"classif.0.weight"' not in text
    result = diagnose_text(text)
    assert result.causes[0].label == "prefix_missing" and not result.decided
    loaded = _run_fix(result.causes[0].fix_code, copy.deepcopy(model), path)
    assert torch.equal(loaded.module.classif[2].weight, torch.load(path)["classif.2.weight"])


def test_a_cut_paste_with_the_wrapper_on_the_file_side_alone_reads_the_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "stereo.pth"
    torch.save(nn.DataParallel(Stereo()).state_dict(), path)  # saved from the wrapper
    model = Stereo()
    text = _cut(load_error(model, torch.load(path)), "cost.3.running_var", "module.cost.0.weight")
    assert '"classif.0.weight"' in text and '"module.classif.0.weight"' not in text
    result = diagnose_text(text)
    assert result.causes[0].label == "prefix_added" and not result.decided
    loaded = _run_fix(result.causes[0].fix_code, copy.deepcopy(model), path)
    assert torch.equal(loaded.classif[2].weight, torch.load(path)["module.classif.2.weight"])


def test_a_cut_paste_with_the_wrapper_on_both_sides_is_not_read_as_the_wrapper() -> None:
    text = _cut(load_error(nn.DataParallel(Stereo()), nn.DataParallel(nn.Sequential(
        nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 4))).state_dict()),
        "module.cost.3.running_var", "module.3.weight")
    labels = [label for label, _ in _labels(diagnose_text(text))]
    assert "prefix_missing" not in labels and "prefix_added" not in labels


# -- only a segmentation head or a final classifier missing: the file is the backbone ----------

class Segmenter(nn.Module):
    def __init__(self, with_head: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        if with_head:  # mmseg's decode heads end in conv_seg
            self.conv_seg = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


class PointSegmenter(nn.Module):
    def __init__(self, with_head: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(5, 8, 3), nn.BatchNorm2d(8))
        if with_head:  # a classifier of its own kind, then the network's final layer
            self.kpclassifier = nn.Module()
            self.kpclassifier.kpconv = nn.Linear(8, 8)
            self.kpclassifier.bn = nn.BatchNorm1d(8)
            self.final = nn.Linear(8, 20)


def test_only_a_segmentation_heads_classifier_missing_is_a_new_task_head(tmp_path: Path) -> None:
    path = tmp_path / "pretrain.pth"
    torch.save(Segmenter(with_head=False).state_dict(), path)  # the released backbone
    model = nn.DataParallel(Segmenter())
    sd = {"module." + k: v for k, v in torch.load(path).items()}
    text = load_error(model, sd)
    assert "Unexpected" not in text and '"module.conv_seg.3.weight"' in text
    result = diagnose_text(text)
    assert result.causes[0].label == "new_task_head" and not result.decided
    # the printed fix loads what the file has and leaves the head to train
    torch.save(sd, path)
    loaded = _run_fix(result.causes[0].fix_code, copy.deepcopy(model), path)
    assert torch.equal(loaded.module.layer1[0].weight, sd["module.layer1.0.weight"])


def test_a_final_layer_behind_a_named_classifier_missing_is_a_new_task_head() -> None:
    text = load_error(PointSegmenter(), PointSegmenter(with_head=False).state_dict())
    assert '"kpclassifier.kpconv.weight"' in text and '"final.bias"' in text
    result = diagnose_text(text)
    assert result.causes[0].label == "new_task_head" and not result.decided


def test_a_final_layer_beside_a_backbone_module_missing_is_not_a_head() -> None:
    text = load_error(PointSegmenter(), {k: v for k, v in PointSegmenter().state_dict().items()
                                         if not k.startswith(("final.", "backbone.1."))})
    assert result_label(text) != "new_task_head"


def result_label(text: str) -> str | None:
    result = diagnose_text(text)
    return result.causes[0].label if result.causes else None


# -- recurrent cells where a recurrent layer is built, or the other way round -------------------

class CellEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru_enc_f = nn.GRUCell(4, 6)
        self.gru_enc_b = nn.GRUCell(4, 6)


class LayerEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru_enc = nn.GRU(4, 6, bidirectional=True)


def test_cells_in_the_file_where_the_model_builds_a_recurrent_layer_are_the_code() -> None:
    text = load_error(LayerEncoder(), CellEncoder().state_dict())
    assert '"gru_enc.weight_ih_l0_reverse"' in text and '"gru_enc_f.weight_ih"' in text
    result = diagnose_text(text)
    assert result.causes[0].label == "model_code_changed" and not result.decided
    assert "nn.GRUCell" in result.causes[0].summary and result.causes[0].fix_code == ""


def test_a_recurrent_layer_in_the_file_where_the_model_builds_cells_reads_the_same() -> None:
    result = diagnose_text(load_error(CellEncoder(), LayerEncoder().state_dict()))
    assert result.causes[0].label == "model_code_changed" and not result.decided


# -- only the biases of one role's layers on one side: the code's bias flag --------------------

class Stages(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(*(Block(bias) for _ in range(3))) for _ in range(2))


class Block(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(4, 4, 3, groups=4, bias=bias)
        self.pwconv = nn.Linear(4, 4)


def test_the_biases_of_one_roles_layers_alone_missing_are_the_codes_bias_flag() -> None:
    text = load_error(Stages(bias=True), Stages(bias=False).state_dict())
    assert '"stages.1.2.dwconv.bias"' in text and "Unexpected" not in text
    result = diagnose_text(text)
    assert result.causes[0].label == "model_code_changed" and not result.decided
    assert "with a bias now" in result.causes[0].summary and result.causes[0].fix_code == ""


def test_the_biases_of_one_roles_layers_alone_unexpected_read_the_same() -> None:
    result = diagnose_text(load_error(Stages(bias=False), Stages(bias=True).state_dict()))
    assert result.causes[0].label == "model_code_changed" and "without a bias" in result.causes[0].summary


# -- a key list that ends in a comma inside a code block was cut --------------------------------

class Sentiment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bert = nn.Module()
        self.bert.embeddings = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
        self.bert.encoder = nn.Sequential(*(nn.Linear(4, 4) for _ in range(4)))
        self.out = nn.Linear(4, 1)


def test_a_missing_list_ending_in_a_comma_before_a_closing_fence_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    torch.save({"module." + k: v for k, v in Sentiment().state_dict().items()}, path)  # DataParallel
    model = Sentiment()
    text = load_error(model, torch.load(path))
    # the paste: a fenced block that stops after the missing list's fifth key, comma and all
    fifth = '"bert.encoder.0.bias", '
    pasted = "```\n" + text[:text.index(fifth) + len(fifth)].rstrip() + "\n```\n"
    assert pasted.rstrip("`\n ").endswith(",") and "Unexpected" not in pasted
    result = diagnose_text(pasted)
    assert result.to_dict()["truncated"] and result.causes[0].label == "prefix_added"
    loaded = _run_fix(result.causes[0].fix_code, copy.deepcopy(model), path)
    assert torch.equal(loaded.out.weight, torch.load(path)["module.out.weight"])


def test_a_missing_list_ending_in_its_period_before_a_closing_fence_is_whole() -> None:
    text = load_error(Sentiment(), {})
    assert not diagnose_text("```\n" + text.rstrip() + "\n```\n").to_dict()["truncated"]
