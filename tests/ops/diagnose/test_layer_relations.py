"""Relations found on frozen6/ (#16) after its before-tuning score, each on real models.

Each case builds real models and takes the real ``load_state_dict`` error: a layer with one
output is a head, not a placeholder; norm layers of another kind (BatchNorm against
InstanceNorm or GroupNorm) are another norm_layer setting, not decided changed code; a width
read from a lone norm line, or from an unnamed layer between two powers of two, is a candidate.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDED, diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.scoring import rules_first


class DetectHead(nn.Module):
    """A YOLOX-like decoupled head: per level, a class and a box convolution."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.cls_preds = nn.ModuleList(nn.Conv2d(16, classes, 1) for _ in range(3))
        self.reg_preds = nn.ModuleList(nn.Conv2d(16, 4, 1) for _ in range(3))


class Detector(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.head = DetectHead(classes)


def test_a_layer_with_one_output_is_a_head_not_a_placeholder() -> None:
    # a single-class detector's file in a 5-class model: [1, 16, 1, 1] and its [1] bias
    text = load_error(Detector(5), Detector(1).state_dict())
    assert "torch.Size([1])" in text
    causes = diagnose_text(text).causes
    assert causes[0].label == "head_size_mismatch" and causes[0].confidence >= DECIDED
    assert all(c.label != "architecture_variant" or c.confidence < DECIDED for c in causes)


def test_flat_one_element_placeholders_are_still_a_partitioned_save() -> None:
    # a partitioned save flattens every parameter to one element, whatever its rank
    state = {k: torch.zeros(1) for k in Detector(5).state_dict()}
    cause = diagnose_text(load_error(Detector(5), state)).causes[0]
    assert cause.label == "partitioned_checkpoint"


def _discriminator(norm: Callable[[int], nn.Module]) -> nn.Module:
    """pix2pix's NLayerDiscriminator: a convolution has a bias unless a BatchNorm follows it."""
    bias = norm is not nn.BatchNorm2d
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 4), nn.LeakyReLU(0.2)]
    width = 8
    for _ in range(3):
        layers += [nn.Conv2d(width, 2 * width, 4, bias=bias), norm(2 * width), nn.LeakyReLU(0.2)]
        width *= 2
    model = nn.Module()
    model.model = nn.Sequential(*layers, nn.Conv2d(width, 1, 4))
    return model


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(2, channels)


@pytest.mark.parametrize(("saved", "built"), [
    (nn.InstanceNorm2d, nn.BatchNorm2d), (nn.BatchNorm2d, nn.InstanceNorm2d),
    (_group_norm, nn.BatchNorm2d), (nn.BatchNorm2d, _group_norm)],
    ids=["instance-into-batch", "batch-into-instance", "group-into-batch", "batch-into-group"])
def test_another_norm_layer_is_a_setting_not_decided_code(saved: Callable[[int], nn.Module],
                                                          built: Callable[[int], nn.Module]) -> None:
    text = load_error(_discriminator(built), _discriminator(saved).state_dict())
    causes = diagnose_text(text).causes
    assert causes[0].label == "architecture_variant" and causes[0].confidence < DECIDED
    assert "norm_layer" in causes[0].summary
    assert all(c.confidence < DECIDED for c in causes)


def test_the_norm_tensors_alone_as_pasted_read_the_same() -> None:
    # the thread's paste: the norms' affine tensors and the convolutions' biases, no statistics
    text = load_error(_discriminator(nn.BatchNorm2d), _discriminator(nn.InstanceNorm2d).state_dict())
    text = re.sub(r', "model\.\d\.(running_mean|running_var|num_batches_tracked)"', "", text)
    assert "running" not in text
    cause = diagnose_text(text).causes[0]
    assert cause.label == "architecture_variant" and cause.confidence < DECIDED


class Stage(nn.Module):
    """A Swin-like stage whose patch merging concatenates 2x2 patches (4 * dim features)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)


class Encoder(nn.Module):
    def __init__(self, merged: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Module(), nn.Module()])
        self.layers[1].downsample = Stage(merged)


def test_a_lone_norm_line_does_not_decide_a_width() -> None:
    # the code that builds stage 1 merges another stage's features: norm and reduction change;
    # the user pasted the first line only
    text = load_error(Encoder(8), Encoder(16).state_dict())
    first = "\n".join(line for line in text.splitlines()
                      if "size mismatch" not in line or "norm.weight" in line)
    assert first.count("size mismatch") == 1
    whole, lone = diagnose_text(text).causes, diagnose_text(first).causes
    assert whole[0].label == "architecture_variant" and rules_first(text).confidence >= DECIDED
    assert all(c.label != "model_code_changed" for c in whole)
    assert lone[0].label == "architecture_variant" and lone[0].confidence < DECIDED
    # other code building the layer is the next candidate, in words (no snippet to run)
    code = next(c for c in lone if c.label == "model_code_changed")
    assert code.confidence < lone[0].confidence and "layers.1.downsample.norm.weight" in code.summary
    assert code.fix_code == ""


class Fusion(nn.Module):
    def __init__(self, channels: int, name: str) -> None:
        super().__init__()
        self.encoder = nn.Conv3d(1, 16, 3)
        self.add_module(name, nn.Conv3d(16, channels, 1))


@pytest.mark.parametrize(("saved", "built", "name", "decided"), [
    (8, 32, "down1", False),     # two powers of two, no head name: a width reads the same
    (7, 21, "down1", True),      # counts that are no widths: a layer's class rows
    (8, 32, "classifier", True),  # a head by name
])
def test_an_unnamed_layer_between_powers_of_two_is_a_candidate(saved: int, built: int, name: str,
                                                                decided: bool) -> None:
    text = load_error(Fusion(built, name), Fusion(saved, name).state_dict())
    causes = diagnose_text(text).causes
    assert causes[0].label == "head_size_mismatch"
    assert (causes[0].confidence >= DECIDED) is decided
    # undecided, the width is the other candidate the report lists
    assert ("architecture_variant" in [c.label for c in causes[1:]]) is not decided


class Voice(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.lstm = nn.LSTM(8, hidden, batch_first=True)


def _first_mismatch_line(text: str) -> str:
    """The header and the first size-mismatch line: what a thread often pastes."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "size mismatch" in line)
    return "\n".join(lines[:first + 1])


def test_a_recurrent_layers_rows_are_a_hidden_size_not_a_count() -> None:
    # an LSTM's weight_ih rows are 4 x hidden: a smaller bottleneck, not fewer classes
    text = load_error(Voice(32), Voice(16).state_dict())
    pasted = _first_mismatch_line(text)
    assert "weight_ih_l0" in pasted and "torch.Size([64, 8])" in pasted
    for shown in (text, pasted):
        cause = diagnose_text(shown).causes[0]
        assert cause.label == "architecture_variant"


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8))


class ArcFace(nn.Module):
    """A margin head whose only parameter is its own ``weight`` (no submodule)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(10, 8))


def test_a_models_own_weight_is_no_prefix_target() -> None:
    # the backbone's file given to the head: every layer's key ends in "weight"
    text = load_error(ArcFace(), Backbone().state_dict())
    assert 'Missing key(s) in state_dict: "weight"' in text
    causes = diagnose_text(text).causes
    assert causes[0].label == "wrong_model"
    assert all(c.label != "prefix_added" for c in causes)


def test_a_wrapped_models_own_weight_is_still_a_prefix() -> None:
    wrapped = nn.DataParallel(ArcFace())
    cause = diagnose_text(load_error(ArcFace(), wrapped.state_dict())).causes[0]
    assert cause.label == "prefix_added" and cause.confidence >= DECIDED


class SpatialTransformer(nn.Module):
    """Stable Diffusion's cross-attention block: 1x1 convolutions around it in v1, Linear in v2."""

    def __init__(self, context: int, linear: bool) -> None:
        super().__init__()
        self.proj_in = nn.Linear(16, 16) if linear else nn.Conv2d(16, 16, 1)
        self.attn2 = nn.Module()
        self.attn2.to_k = nn.Linear(context, 16, bias=False)
        self.attn2.to_v = nn.Linear(context, 16, bias=False)
        self.proj_out = nn.Linear(16, 16) if linear else nn.Conv2d(16, 16, 1)


class UNet(nn.Module):
    def __init__(self, context: int, linear: bool) -> None:
        super().__init__()
        self.output_blocks = nn.ModuleList(SpatialTransformer(context, linear) for _ in range(2))


def test_layers_of_another_kind_beside_a_width_are_a_variant() -> None:
    # a v1 checkpoint (context 24, convolutions) in a v2 model (context 32, Linear); the
    # thread pasted the last five lines: three reshaped projections, two context widths
    text = load_error(UNet(32, linear=True), UNet(24, linear=False).state_dict())
    lines = [line for line in text.splitlines() if "size mismatch" in line]
    tail = "\n".join(lines[-5:])
    assert sum("torch.Size([16, 16, 1, 1])" in line for line in lines[-5:]) == 3
    for shown in (text, tail):
        cause = diagnose_text(shown).causes[0]
        assert cause.label == "architecture_variant"


class BoxPredictor(nn.Module):
    """detectron2's ROI heads: classes + background scores, per-class boxes and masks."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.roi_heads = nn.Module()
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(16, classes + 1)
        self.roi_heads.box_predictor.bbox_pred = nn.Linear(16, 4 * classes)
        self.roi_heads.mask_head = nn.Module()
        self.roi_heads.mask_head.predictor = nn.Conv2d(8, classes, 1)


def _fvcore_2019_log(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """What fvcore's checkpointer of 2019 logged for each tensor of another shape (it skipped
    them and loaded the rest with strict=False): the real shapes, in its words."""
    own = model.state_dict()
    return "\n".join(f"'{k}' has shape {tuple(v.shape)} in the checkpoint but "
                     f"{tuple(own[k].shape)} in the model! Skipped."
                     for k, v in state.items() if k in own and v.shape != own[k].shape)


def test_fvcore_2019_skipped_shapes_are_read() -> None:
    text = _fvcore_2019_log(BoxPredictor(67), BoxPredictor(80).state_dict())
    assert "(81, 16) in the checkpoint but (68, 16) in the model! Skipped." in text
    result = diagnose_text(text)
    assert len(result.evidence.mismatched) == 6
    assert result.causes[0].label == "head_size_mismatch" and result.causes[0].confidence >= DECIDED


class Decoder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed_positions = nn.Embedding(448, width)


@pytest.mark.frameworks
def test_accelerates_refusal_names_the_tensor_and_both_shapes() -> None:
    from accelerate.utils import set_module_tensor_to_device

    model, saved = Decoder(16), Decoder(40).state_dict()
    with pytest.raises(ValueError) as err:
        set_module_tensor_to_device(model, "embed_positions.weight", "cpu",
                                    value=saved["embed_positions.weight"])
    text = f"Error loading ASR components: {err.value}"
    assert 'in "weight" (which has shape torch.Size([448, 16]))' in text
    result = diagnose_text(text)
    assert [m.to_dict() for m in result.evidence.mismatched] == [
        {"key": "weight", "checkpoint_shape": [448, 40], "model_shape": [448, 16]}]
    assert result.causes[0].label == "architecture_variant"
