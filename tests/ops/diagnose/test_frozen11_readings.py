"""Readings found while tuning on frozen11/ and frozen12/ (#16).

Each is a relation of keys and shapes that holds for every model: an empty tensor is a partitioned
parameter's placeholder whatever its key is named (LoRA keys saved under ZeRO-3 are not an
adapter of another rank), and output layers that count what a table beside them counts are two
dictionaries (a translation model's source and target), not two settings. Every text here is the
error a real ``load_state_dict`` raises; every printed fix is run on a copy of the real model and
its file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.printed import labels as _labels, run_fix as _run_fix


# -- LoRA tensors saved from ZeRO-3-partitioned parameters (llamafactory917, openrlhf651) -------

class LoraLinear(nn.Module):
    """PEFT's layout: ``base_layer`` beside ``lora_A``/``lora_B`` per adapter name."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.base_layer = nn.Linear(width, width)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(width, rank, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, width, bias=False)})


class LoraDecoder(nn.Module):
    def __init__(self, rank: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"up_proj": LoraLinear(16, rank),
                                                   "down_proj": LoraLinear(16, rank)})
                                    for _ in range(3))


def _adapter(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def _strict_false_error(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """``load_state_dict(strict=False)`` still raises on sizes (what both threads did)."""
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        return f"RuntimeError: {e}"
    raise AssertionError("the adapter loaded")


def test_empty_lora_tensors_are_partitioned_placeholders_not_another_rank(tmp_path: Path) -> None:
    # ZeRO-3 keeps each parameter's data on its rank: saved without gathering, every tensor of
    # the adapter is an empty placeholder
    path = tmp_path / "adapter.pt"
    torch.save({k: torch.empty(0) for k in _adapter(LoraDecoder())}, path)
    text = _strict_false_error(LoraDecoder(), torch.load(path, weights_only=True))
    assert "lora_B.default.weight: copying a param with shape torch.Size([0])" in text
    top = diagnose_text(text).causes[0]
    assert (top.label, top.evidence["facts"]["side"]) == ("partitioned_checkpoint", "checkpoint"), \
        _labels(diagnose_text(text))
    # the gathering fix is run on a real ZeRO-3 folder by test_text_fix_snippets.py
    assert top.fix_code.startswith("CHECKPOINT_DIR = ")


def test_a_lora_of_another_rank_is_still_the_adapter() -> None:
    text = _strict_false_error(LoraDecoder(rank=4), _adapter(LoraDecoder(rank=8)))
    assert diagnose_text(text).causes[0].label == "adapter_or_quantization"


# -- a source and a target dictionary of other sizes (fairseq216) -------------------------------

class Seq2Seq(nn.Module):
    """fairseq's layout: a source table, a target table and the output layer over the target."""

    def __init__(self, source: int, target: int) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embed_tokens = nn.Embedding(source, 8)
        self.decoder = nn.Module()
        self.decoder.embed_tokens = nn.Embedding(target, 8)
        self.decoder.fc3 = nn.Linear(8, target)


def test_output_layers_over_a_tables_count_are_two_dictionaries(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = Seq2Seq(19, 104).state_dict()
    path = tmp_path / "checkpoint.pt"
    torch.save(saved, path)
    text = load_error(Seq2Seq(21, 112), torch.load(path, weights_only=True))
    assert "size mismatch for decoder.fc3.bias" in text
    result = diagnose_text(text)
    assert result.causes[0].label == "head_size_mismatch", _labels(result)
    assert all(c.label != "architecture_variant" or c.confidence < result.causes[0].confidence
               for c in result.causes[1:])
    loaded = _run_fix(result.causes[0].fix_code, Seq2Seq(21, 112), path)  # the file's rows
    for key, value in saved.items():
        assert torch.equal(loaded.state_dict()[key], value), key


# -- a one-stage detector built with another number of anchors (effdet500) ----------------------

class OneStageHead(nn.Module):
    """EfficientDet's heads: 4 box offsets and ``classes`` scores per anchor at each position."""

    def __init__(self, anchors: int, classes: int) -> None:
        super().__init__()
        self.regressor = nn.Module()
        self.regressor.header = nn.Conv2d(16, anchors * 4, 1)
        self.classifier = nn.Module()
        self.classifier.header = nn.Conv2d(16, anchors * classes, 1)


class TwoStageHead(nn.Module):
    """torchvision's FastRCNNPredictor: class-specific boxes, 4 offsets per class."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(16, classes)
        self.bbox_pred = nn.Linear(16, classes * 4)


def test_box_and_class_outputs_in_one_ratio_are_the_anchors(tmp_path: Path) -> None:
    path = tmp_path / "head.pt"
    torch.save(OneStageHead(9, 5).state_dict(), path)
    text = load_error(OneStageHead(12, 5), torch.load(path, weights_only=True))
    assert "size mismatch for regressor.header.weight" in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert (top.label, top.evidence["facts"]["kind"]) == ("architecture_variant", "config"), _labels(result)
    assert "anchors per position" in top.summary and not result.decided
    assert top.fix_code == ""  # a setting of the user's: words only
    head = next(c for c in result.causes if c.label == "head_size_mismatch")
    assert head.confidence < top.confidence


def test_class_specific_boxes_are_still_a_class_count() -> None:
    text = load_error(TwoStageHead(4), TwoStageHead(91).state_dict())
    result = diagnose_text(text)
    assert result.causes[0].label == "head_size_mismatch" and result.decided, _labels(result)


# -- transposed convolutions' outputs on axis 1 (nnformer44) ------------------------------------

class Up(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(dim, classes, (2, 4, 4), stride=(2, 4, 4))


class SegNet(nn.Module):
    """nnFormer's deep supervision: one transposed convolution per scale, one channel per class."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.encoder = nn.Conv3d(1, 8, 3)
        self.final = nn.ModuleList(Up(d, classes) for d in (8, 16, 32))


def test_transposed_convolutions_of_another_class_count_are_a_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = SegNet(14).state_dict()
    path = tmp_path / "synapse.pth"
    torch.save(saved, path)
    text = load_error(SegNet(4), torch.load(path, weights_only=True))
    assert "torch.Size([8, 14, 2, 4, 4])" in text  # [in, out, *kernel]: the classes on axis 1
    result = diagnose_text(text)
    assert result.causes[0].label == "head_size_mismatch", _labels(result)
    assert "14 in the checkpoint, 4 in the model" in result.causes[0].summary
    loaded = _run_fix(result.causes[0].fix_code, SegNet(4), path)  # the rest loads, the head is new
    assert torch.equal(loaded.state_dict()["encoder.weight"], saved["encoder.weight"])
    assert loaded.state_dict()["final.0.up.bias"].shape == (4,)


def test_a_transposed_convolution_reading_more_features_is_still_a_width() -> None:
    # axis 1 differs without the bias: the outputs are the same, the inputs are not
    text = load_error(SegNet(4), {**SegNet(4).state_dict(), "final.0.up.weight": torch.zeros(8, 6, 2, 4, 4)})
    assert diagnose_text(text).causes[0].label != "head_size_mismatch"


# -- the state a dynamics model predicts and reads back (neuralodes1) ---------------------------

class ODEFunc(nn.Module):
    """Reads the state (``dim`` variables) beside 3 fixed inputs and predicts the state."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ext0 = nn.Sequential(nn.Linear(dim + 3, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                                  nn.Linear(32, dim))


class AttentionDecoder(nn.Module):
    """An OCR decoder: its cell reads the previous character's one-hot beside the hidden state."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16))
        self.attention_cell = nn.Module()
        self.attention_cell.rnn = nn.LSTMCell(16 + classes, 16)
        self.generator = nn.Linear(16, classes)


def test_a_count_fed_back_into_the_first_layer_is_the_data_not_classes() -> None:
    text = load_error(ODEFunc(2), ODEFunc(3).state_dict())
    assert "ext0.0.weight: copying a param with shape torch.Size([32, 6])" in text
    result = diagnose_text(text)
    assert result.causes[0].label == "architecture_variant" and not result.decided, _labels(result)
    assert result.causes[0].fix_code == ""  # the user's setting: words only
    head = next(c for c in result.causes if c.label == "head_size_mismatch")
    assert head.confidence < result.causes[0].confidence


def test_a_class_fed_back_into_a_decoder_cell_is_still_the_classes() -> None:
    result = diagnose_text(load_error(AttentionDecoder(37), AttentionDecoder(38).state_dict()))
    assert result.causes[0].label == "head_size_mismatch", _labels(result)


# -- one symbol table of another size, nothing else (mozillatts69, moleculestm5, simsgt8) -------

class SymbolNet(nn.Module):
    """A text-to-speech encoder's symbol table; a graph encoder's atom tables look the same."""

    def __init__(self, symbols: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(symbols, 16)
        self.encoder = nn.Linear(16, 16)


def test_a_lone_symbol_table_lists_the_codes_symbol_set_as_a_candidate() -> None:
    text = load_error(SymbolNet(149), SymbolNet(150).state_dict())
    result = diagnose_text(text)
    assert [c.label for c in result.causes[:2]] == ["head_size_mismatch", "model_code_changed"], \
        _labels(result)
    assert not result.decided
    code = result.causes[1]
    assert "embedding.weight indexes 150 symbols in the checkpoint and 149 in the model" in code.summary
    assert code.fix_code == ""  # a version to pick: words only


def test_a_table_beside_its_output_layer_is_the_vocabulary_alone() -> None:
    class LM(SymbolNet):
        def __init__(self, symbols: int) -> None:
            super().__init__(symbols)
            self.out = nn.Linear(16, symbols)

    result = diagnose_text(load_error(LM(149), LM(150).state_dict()))
    assert "model_code_changed" not in [c.label for c in result.causes], _labels(result)
