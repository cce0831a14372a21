"""One quantization rule (``adapters.py``): state named by its leaves, and a layer's weight-only
layout beside its float weights, read from one vocabulary and reported as one finding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.adapters import WEIGHT_ONLY_LEAVES, adapter_or_quantization
from ckpttools.ops.diagnose.diagnosis import diagnose_text, evidence_from_text
from ckpttools.ops.diagnose.error_text import parse_error_text
from tests.ops.diagnose.gen_models import dynamic_quantized
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.scoring import rules_first

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))


def test_a_dynamic_quantized_file_is_one_finding_over_every_key() -> None:
    # zero_point/_packed_params are named state, scale/zero_point beside a missing float weight
    # a layout: both readings fire on these keys, one finding explains all of them
    text = load_error(_mlp(), dynamic_quantized(_mlp()).state_dict())
    ev = evidence_from_text(parse_error_text(text))
    finding = adapter_or_quantization(ev)
    assert finding is not None and finding.facts["quantized"]
    assert finding.explains == set(ev.missing + ev.unexpected)
    result = diagnose_text(text)
    assert [c.label for c in result.causes] == ["adapter_or_quantization"]
    assert rules_first(text).confidence >= 0.8  # the rules decide; reliability.py bounds the report


class Shifted(nn.Module):
    """A layer with a ``scale`` and a ``zeros`` buffer of its own (a normalising layer)."""

    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        if extra:
            self.norm = nn.Module()
            self.norm.register_buffer("scale", torch.ones(4))
            self.norm.register_buffer("zeros", torch.zeros(4))


def test_scale_and_zeros_alone_are_not_quantization() -> None:
    assert {"scale", "zeros"} <= WEIGHT_ONLY_LEAVES
    text = load_error(Shifted(True), Shifted(False).state_dict())
    assert "norm.zeros" in text
    # no quantized weight and no float weight beside them: a candidate, never decided
    result = diagnose_text(text)
    assert not result.decided and len(result.causes) >= 2


def test_a_quantized_weight_beside_them_decides() -> None:
    class Gptq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Module()
            for name in ("qweight", "scales", "zeros"):
                self.fc.register_buffer(name, torch.zeros(4, dtype=torch.int32))

    class Float(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

    for model, ckpt in ((Float(), Gptq()), (Gptq(), Float())):
        text = load_error(model, ckpt.state_dict())
        assert diagnose_text(text).causes[0].label == "adapter_or_quantization"
        assert rules_first(text).confidence >= 0.8  # the rules decide; reliability.py bounds it
    # the quantized model's keys alone (the float file's cut): still the first cause
    text = load_error(Gptq(), Float().state_dict())
    shown = "\n".join(ln for ln in text.split("\n") if "Unexpected" not in ln)
    assert "fc.qweight" in shown and diagnose_text(shown).causes[0].label == "adapter_or_quantization"


def test_version_entries_that_are_quantization_state_or_weights_are_not_called_harmless() -> None:
    """The version-buffers reading names what it would drop: quantization state (needed to read
    the quantized weights) and learned tensors are never said to "hold no learned weights"."""
    import torch
    from torch import nn

    from ckpttools.ops.diagnose.diagnosis import diagnose_text
    from tests.ops.diagnose.generated_corpus import load_error

    model = nn.Sequential(nn.Linear(4, 4))
    quantized = {**model.state_dict(), "0.absmax": torch.ones(2), "0.quant_map": torch.ones(16)}
    causes = diagnose_text(load_error(model, quantized)).causes
    summary = next(c.summary for c in causes if c.label == "version_buffers")
    assert "absmax, quant_map are quantization state" in summary
    assert "no learned weights" not in summary
