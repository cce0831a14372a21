"""#16's families when the text shows one side only, on errors made by the real ``load_state_dict``.

Each test builds the failure for real (wrap, compile, insert a norm, fuse projections, spectral
norm, TF-style gamma/beta, a detector's box head or feature levels), cuts the message the way
people paste it, and checks the first answer, its confidence (decided only where the shown keys
decide) and, when it abstains, the candidates and the command that decides.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDE_COMMAND, diagnose_text
from tests.ops.diagnose.gen_models import ARCHS, DetrLike
from tests.ops.diagnose.gen_presentations import prose, pytorch03
from tests.ops.diagnose.generated_corpus import _legacy_norm_names, _other_side, _shift, load_error
from tests.ops.diagnose.scoring import rules_first

_ARCH = {a.name: a for a in ARCHS}


def _missing_only(text: str) -> str:
    return "\n".join(text.split("\n")[:2])


@pytest.mark.parametrize("wrap, prefix", [(nn.DataParallel, "module."), (torch.compile, "_orig_mod.")])
def test_wrapper_class_with_unexpected_keys_decides(wrap, prefix: str) -> None:  # type: ignore[no-untyped-def]
    arch = _ARCH["convnet"]
    text = _other_side(load_error(wrap(arch.make()), arch.make().state_dict()))
    assert "Missing" not in text
    cause = diagnose_text(text).causes[0]
    assert (cause.label, cause.evidence["facts"]["prefix"]) == ("prefix_missing", prefix)
    assert rules_first(text).confidence >= 0.8  # the report bounds it (test_reliability.py)


def test_whole_model_missing_abstains_with_candidates_and_the_command() -> None:
    arch = _ARCH["mlp"]
    state = {"epoch": 3, "state_dict": arch.make().state_dict()}
    result = diagnose_text(_missing_only(load_error(arch.make(), state)))
    labels = [c.label for c in result.causes]
    assert not result.decided and labels[0] == "prefix_added"
    assert {"wrapped_checkpoint", "wrong_model"} <= set(labels)
    assert json.loads(json.dumps(result.to_dict()))["decide_with"] == DECIDE_COMMAND


def test_another_model_unexpected_alone_is_another_model() -> None:
    text = _other_side(load_error(_ARCH["convnet"].make(), _ARCH["mlp"].make().state_dict()))
    result = diagnose_text(text)
    assert result.causes[0].label == "wrong_model" and not result.decided


@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_norm_inserted_missing_side_is_code_change_not_depth(name: str) -> None:
    arch = _ARCH[name]
    text = _missing_only(load_error(arch.make(), arch.make(norm=False).state_dict()))
    causes = diagnose_text(text).causes
    assert causes[0].label == "model_code_changed" and causes[0].confidence < 0.8
    assert "architecture_variant" in [c.label for c in causes]
    assert "inserted" in causes[0].summary


def test_deeper_model_missing_side_stays_a_depth() -> None:
    arch = _ARCH["convnet"]
    cause = diagnose_text(load_error(arch.make(depth=4), arch.make().state_dict())).causes[0]
    assert (cause.label, cause.evidence["facts"]["kind"]) == ("architecture_variant", "depth")


def test_index_shift_with_both_sides_is_model_code_changed() -> None:
    arch = _ARCH["mlp"]
    cause = diagnose_text(load_error(arch.make(), _shift(arch.make().state_dict()))).causes[0]
    assert cause.label == "model_code_changed"


def test_fused_projection_named_on_the_missing_side() -> None:
    arch = _ARCH["tinylm"]
    text = _missing_only(load_error(arch.make(fused=True), arch.make().state_dict()))
    cause = diagnose_text(text).causes[0]
    assert cause.label == "fused_projection" and cause.confidence < 0.8
    assert "wqkv" in cause.summary


def test_missing_multihead_in_proj_is_not_a_fused_projection() -> None:
    arch = _ARCH["encoder"]
    text = prose(*_lists(arch.make(depth=3), arch.make().state_dict()))
    assert diagnose_text(text).causes[0].label == "architecture_variant"


def _lists(model: nn.Module, state: dict) -> tuple[list[str], list[str], list]:  # type: ignore[type-arg]
    own = model.state_dict()
    return [k for k in own if k not in state], [k for k in state if k not in own], []


@pytest.mark.parametrize("name", ["convnet", "mlp", "encoder"])
def test_spectral_norm_weight_alone_missing_is_a_reparametrization(name: str) -> None:
    arch = _ARCH[name]
    src = arch.make()
    nn.utils.spectral_norm(dict(src.named_modules())[arch.head])
    result = diagnose_text(_missing_only(load_error(arch.make(), src.state_dict())))
    cause = result.causes[0]
    assert cause.label == "version_buffers" and not result.decided
    assert "weight_orig" in cause.summary and "spectral_norm" in cause.fix_code


@pytest.mark.parametrize("name", ["tinylm", "encoder"])
def test_gamma_beta_with_one_side_shown(name: str) -> None:
    model, state = _legacy_norm_names(_ARCH[name])  # type: ignore[misc]
    text = load_error(model, state)
    missing = diagnose_text(_missing_only(text)).causes[0]
    assert missing.label == "renamed_keys" and missing.confidence < 0.8
    assert ["gamma", "weight"] in missing.evidence["facts"]["renames"]
    unexpected = diagnose_text(_other_side(text)).causes[0]
    assert unexpected.label == "renamed_keys" and rules_first(_other_side(text)).confidence >= 0.8


def test_box_head_width_is_not_a_head_nor_a_shard() -> None:
    text = load_error(DetrLike(head_width=16), DetrLike().state_dict())
    cause = diagnose_text(text).causes[0]
    assert (cause.label, cause.evidence["facts"]["kind"]) == ("architecture_variant", "width")
    first_two = "\n".join(text.split("\n")[:3])  # bbox_head.0.weight and .bias only
    causes = diagnose_text(first_two).causes
    assert all(c.confidence < 0.8 for c in causes if c.label == "head_size_mismatch")
    assert causes[0].label == "architecture_variant"


def test_level_embed_is_feature_levels_not_a_head() -> None:
    cause = diagnose_text(load_error(DetrLike(num_levels=5), DetrLike().state_dict())).causes[0]
    assert cause.label == "architecture_variant"


def test_pytorch03_repr_of_the_missing_set_is_read() -> None:
    arch = _ARCH["convnet"]
    model, state = arch.make(depth=4), arch.make().state_dict()
    text = pytorch03(*_lists(model, state))  # str(KeyError(msg)) is repr(msg): quotes escaped
    assert "\\'" in text
    result = diagnose_text(text)
    assert result.found and result.causes[0].label == "architecture_variant"


def test_prose_names_top_level_keys_in_code_quotes_but_not_api_names() -> None:
    text = "Calling `load_state_dict` says these keys are missing: `total_ops`, `total_params`."
    result = diagnose_text(text)
    assert result.causes[0].label == "profiler_buffers"
    assert result.evidence.missing == ("total_ops", "total_params")


def test_prose_size_mismatch_of_a_top_level_parameter() -> None:
    text = ("It also says size mismatch for level_embed: the checkpoint has torch.Size([4, 8]) and "
            "the model torch.Size([4, 16]).")
    result = diagnose_text(text)
    assert result.evidence.mismatched[0].key == "level_embed"
    assert result.causes[0].label == "architecture_variant"


def test_part_name_on_every_missing_key_is_a_candidate() -> None:
    from tests.ops.diagnose.gen_models import Detector

    arch = _ARCH["convnet"]
    text = load_error(Detector(arch.make(), arch.head), arch.make().state_dict())
    result = diagnose_text(_missing_only(text))
    wrong = next(c for c in result.causes if c.label == "wrong_model")
    assert not result.decided and re.search(r"model\.backbone\.load_state_dict", wrong.fix_code)


class LayerScaleBlock(nn.Module):
    """ConvNeXt/CaiT-style: a learned per-channel ``gamma`` (layer scale) when enabled."""

    def __init__(self, layer_scale: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        if layer_scale:
            self.gamma = nn.Parameter(torch.ones(8))


def test_layer_scale_gamma_is_not_a_decided_gamma_beta_rename() -> None:
    model = nn.Sequential(*[LayerScaleBlock(False) for _ in range(3)])
    state = nn.Sequential(*[LayerScaleBlock(True) for _ in range(3)]).state_dict()
    causes = diagnose_text(load_error(model, state)).causes
    assert all(c.confidence < 0.8 for c in causes if c.label == "renamed_keys")


def test_renamed_batchnorm_module_is_a_rename() -> None:
    # torch fills a missing num_batches_tracked itself: it shows on the checkpoint's side only
    from tests.ops.diagnose.gen_models import UNet
    from tests.ops.diagnose.generated_corpus import _rename

    text = load_error(UNet(), _rename(UNet().state_dict(), "inc", "input_layer"))
    assert "inc.1.num_batches_tracked" not in text and "input_layer.1.num_batches_tracked" in text
    cause = diagnose_text(text).causes[0]
    assert cause.label == "renamed_keys" and rules_first(text).confidence >= 0.8
    assert ["input_layer", "inc"] in cause.evidence["facts"]["renames"]


def _vocoder(kind: str) -> nn.Module:
    """HiFi-GAN-style conv stack with weight norm: the old API, the parametrizations one, or none."""
    import warnings

    net = nn.Sequential(nn.Conv1d(4, 8, 3), nn.LeakyReLU(), nn.Conv1d(8, 1, 3))
    with warnings.catch_warnings():
        # NOTE(torch>=2.1): the old weight_norm warns that it is deprecated; the files it wrote exist
        warnings.simplefilter("ignore", FutureWarning)
        for layer in (net[0], net[2]):
            if kind == "old":
                nn.utils.weight_norm(layer)
            elif kind == "new":
                nn.utils.parametrizations.weight_norm(layer)
    return net


@pytest.mark.parametrize("model, ckpt", [("plain", "old"), ("old", "plain"), ("plain", "new"),
                                         ("old", "new")])
def test_weight_norm_in_one_file_only_is_a_reparametrization(model: str, ckpt: str) -> None:
    cause = diagnose_text(load_error(_vocoder(model), _vocoder(ckpt).state_dict())).causes[0]
    assert cause.label == "version_buffers" and cause.confidence >= 0.8


def test_task_module_holder_prefix_with_one_side_shown() -> None:
    from tests.ops.diagnose.generated_corpus import _Holder

    arch = _ARCH["convnet"]
    saved = load_error(arch.make(), _Holder(arch.make()).state_dict())  # Lightning-style self.model
    cause = diagnose_text(_other_side(saved)).causes[0]
    assert (cause.label, cause.evidence["facts"]["prefix"]) == ("prefix_added", "model.")
    assert cause.confidence < 0.8
    loaded = load_error(_Holder(arch.make()), arch.make().state_dict())
    cause = diagnose_text(_missing_only(loaded)).causes[0]
    assert (cause.label, cause.evidence["facts"]["prefix"]) == ("prefix_missing", "model.")


def test_deeper_stack_under_one_name_is_not_a_holder() -> None:
    arch = _ARCH["mlp"]
    cause = diagnose_text(load_error(arch.make(depth=5), arch.make().state_dict())).causes[0]
    assert cause.label == "architecture_variant"


def test_pytorch03_one_key_under_a_task_module_name() -> None:
    from tests.ops.diagnose.generated_corpus import _Holder

    arch = _ARCH["convnet"]
    text = pytorch03(*_lists(arch.make(), _Holder(arch.make()).state_dict()))
    assert text.startswith("KeyError: 'unexpected key \"model.conv1.weight\"")
    cause = diagnose_text(text).causes[0]
    assert cause.label == "prefix_added" and cause.confidence < 0.8


def test_quantization_scale_of_a_qkv_layer_is_not_a_fused_projection() -> None:
    from tests.ops.diagnose.gen_models import TinyViT, dynamic_quantized

    text = pytorch03(*_lists(TinyViT(), dynamic_quantized(TinyViT()).state_dict()))
    assert ".attn.qkv.scale" in text
    assert diagnose_text(text).causes[0].label != "fused_projection"


def test_norm_examples_of_a_deeper_model_in_prose_are_not_gamma_beta() -> None:
    from tests.ops.diagnose.gen_models import TinyViT

    text = prose(*_lists(TinyViT(depth=3), TinyViT().state_dict()))
    assert "`blocks.2.norm1.weight`" in text
    assert diagnose_text(text).causes[0].label == "architecture_variant"
