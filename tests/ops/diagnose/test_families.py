"""The families of #16 on texts made by the real loaders from real models.

A backbone's weights passed to a detector, a dynamically quantized state_dict, a width change
shown by the input layer alone (whatever the layer is called), and the same failures in the
wording of PyTorch <= 0.3, mmcv and detectron2.
"""

from __future__ import annotations

import pytest
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.gen_models import ARCHS, Detector, dynamic_quantized
from tests.ops.diagnose.gen_presentations import detectron2, mmcv, pytorch03
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.scoring import rules_first

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"),
]
_ARCH = {a.name: a for a in ARCHS}


@pytest.mark.parametrize("name", ["convnet", "mlp", "encoder"])
def test_backbone_file_in_a_detector_is_the_wrong_file(name: str) -> None:
    arch = _ARCH[name]
    text = load_error(Detector(arch.make(), arch.head), arch.make().state_dict())
    cause = diagnose_text(text).causes[0]
    assert (cause.label, cause.evidence["facts"]["part"]) == ("wrong_model", "backbone.")
    assert rules_first(text).confidence >= 0.8 and "model.backbone.load_state_dict(sd" in cause.fix_code


def test_a_wrapped_model_is_still_a_prefix() -> None:
    arch = _ARCH["convnet"]
    text = load_error(nn.DataParallel(arch.make()), arch.make().state_dict())
    assert diagnose_text(text).causes[0].label == "prefix_missing"


@pytest.mark.parametrize("name", ["convnet", "mlp", "tinylm", "encoder"])
def test_dynamic_quantization_state(name: str) -> None:
    arch = _ARCH[name]
    text = load_error(arch.make(), dynamic_quantized(arch.make()).state_dict())
    cause = diagnose_text(text).causes[0]
    assert cause.label == "adapter_or_quantization" and rules_first(text).confidence >= 0.8
    assert cause.evidence["facts"]["quantized"]


class Restorer(nn.Module):
    """EDSR-style: the stem conv is called ``head``, the output conv ``tail``."""

    def __init__(self, feats: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, feats, 3, padding=1))
        self.body = nn.Sequential(nn.Conv2d(feats, feats, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(feats, 3, 3, padding=1))


@pytest.mark.parametrize("lines", [1, 2])
def test_the_input_layer_alone_shows_a_width_not_a_head(lines: int) -> None:
    text = load_error(Restorer(64), Restorer(256).state_dict())
    shown = "\n".join(text.split("\n")[:1 + lines])  # the first mismatch line(s) only
    causes = diagnose_text(shown).causes
    assert causes[0].label == "architecture_variant"
    assert all(c.label != "head_size_mismatch" or c.confidence < 0.8 for c in causes)


@pytest.mark.parametrize("fmt", [mmcv, detectron2])
def test_other_loaders_read_like_torch(fmt) -> None:  # type: ignore[no-untyped-def]
    model, state = _ARCH["convnet"].make(num_classes=7), _ARCH["convnet"].make().state_dict()
    own = model.state_dict()
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                  if state[k].shape != v.shape]
    cause = diagnose_text(fmt([], [], mismatched)).causes[0]
    assert cause.label == "head_size_mismatch" and cause.confidence >= 0.8


def test_pytorch03_first_key_only_is_a_candidate_not_a_verdict() -> None:
    arch = _ARCH["convnet"]
    text = pytorch03([], list(nn.DataParallel(arch.make()).state_dict()), [])
    assert text.startswith("KeyError: 'unexpected key \"module.")
    causes = diagnose_text(text).causes
    assert causes[0].label == "prefix_added" and causes[0].confidence < 0.8  # one key shown


class Staged(nn.Module):
    """ResNet-style stages ``layer1..layer3`` of ``depth`` blocks each."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        for i in (1, 2, 3):
            self.add_module(f"layer{i}", nn.Sequential(*[nn.Linear(4, 4) for _ in range(depth)]))


def test_another_depth_in_every_stage() -> None:
    cause = diagnose_text(load_error(Staged(3), Staged(2).state_dict())).causes[0]
    assert (cause.label, cause.evidence["facts"]["kind"]) == ("architecture_variant", "depth")
    assert "layer{1..3}.2" in cause.summary


@pytest.mark.parametrize("name", ["mlp", "tinylm", "encoder"])
def test_tensor_parallel_rank_file(name: str) -> None:
    from tests.ops.diagnose.gen_models import tensor_parallel_shard

    arch = _ARCH[name]
    text = load_error(arch.make(), tensor_parallel_shard(arch.make()))
    cause = diagnose_text(text).causes[0]
    assert (cause.label, cause.evidence["facts"]["factor"]) == ("partitioned_checkpoint", 2)
    assert rules_first(text).confidence >= 0.8 and "tensor-parallel" in cause.summary


def test_fewer_key_value_heads_is_not_a_shard() -> None:
    # only k/v projections cut on their output axis (grouped-query attention): one axis, no shard
    class Attn(nn.Module):
        def __init__(self, kv: int) -> None:
            super().__init__()
            self.q_proj, self.o_proj = nn.Linear(16, 16), nn.Linear(16, 16)
            self.k_proj, self.v_proj = nn.Linear(16, kv), nn.Linear(16, kv)

    causes = diagnose_text(load_error(Attn(16), Attn(4).state_dict())).causes
    assert causes[0].label != "partitioned_checkpoint" or causes[0].confidence < 0.8
