"""Cause rules on hand-made evidence, and the diagnosis from real files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpttools.ops.diagnose.causes import LABELS, rank_findings
from ckpttools.ops.diagnose.error_text import ShapeMismatch
from ckpttools.ops.diagnose.evidence import Evidence


def _top(ev: Evidence) -> str | None:
    found = rank_findings(ev)
    return found[0].label if found else None


@pytest.mark.parametrize("ev,label", [
    (Evidence(missing=("a.w",), unexpected=("module.a.w",)), "prefix_added"),
    (Evidence(missing=("module.a.w",), unexpected=("a.w",)), "prefix_missing"),
    (Evidence(missing=("a.w",), unexpected=("epoch", "state_dict")), "wrapped_checkpoint"),
    (Evidence(unexpected=("state", "param_groups")), "optimizer_state_passed"),
    (Evidence(unexpected=("bn.num_batches_tracked",)), "version_buffers"),
    (Evidence(missing=("lm_head.weight",)), "tied_weights"),
    (Evidence(unexpected=("l.0.q.lora_A.weight", "l.0.q.lora_B.weight")), "adapter_or_quantization"),
    (Evidence(unexpected=("ema.a.w",), missing=("a.w",)), "ema_weights"),
    (Evidence(missing=("b.0.attn.q_proj.weight", "b.0.attn.k_proj.weight"),
              unexpected=("b.0.attn.qkv.weight",)), "fused_projection"),
    (Evidence(mismatched=(ShapeMismatch("h.0.c_attn.weight", (8, 24), (24, 8)),)), "transposed_weights"),
    (Evidence(mismatched=(ShapeMismatch("l.0.w", (0,), (8, 8)),)), "partitioned_checkpoint"),
    (Evidence(mismatched=(ShapeMismatch("fc.weight", (1000, 8), (10, 8)),)), "head_size_mismatch"),
    (Evidence(missing=("blocks.4.weight", "blocks.5.weight")), "architecture_variant"),
    (Evidence(missing=("norm.gamma", "norm.beta")), "renamed_keys"),
    (Evidence(missing=("enc.0.1.weight", "enc.1.1.weight"),
              unexpected=("enc.0.weight", "enc.1.weight")), "model_code_changed"),
    (Evidence(missing=("lstm.weight_ih_l0", "lstm.weight_hh_l0", "proj.weight"),
              unexpected=("stem.weight", "bn.weight", "head.weight")), "wrong_model"),
])
def test_rules(ev: Evidence, label: str) -> None:
    assert label in LABELS
    assert _top(ev) == label


def test_nothing_recognisable_gives_no_cause() -> None:
    assert rank_findings(Evidence()) == []


def test_files_path_gives_remap_command(make_checkpoint: Callable[..., Path]) -> None:
    import ckpttools
    from ckpttools.ops.model_spec import load_model_signature
    from tests._models import tiny_net

    state = {f"module.{k}": v for k, v in tiny_net().state_dict().items()}
    path = make_checkpoint("torch-zip", state)
    sig = load_model_signature("tests/_models.py:TinyNet")
    with ckpttools.open_checkpoint(str(path)) as reader:
        result = ckpttools.diagnose_checkpoint(reader, sig, model_name="tests/_models.py:TinyNet")
    cause = result.causes[0]
    assert result.found and cause.label == "prefix_added"
    assert cause.fix_command is not None and "--strip-prefix module." in cause.fix_command
    assert result.evidence.matched == 0


def test_files_path_clean_checkpoint_has_nothing_to_diagnose(tiny_model: Any) -> None:
    import ckpttools

    result = ckpttools.diagnose_checkpoint(dict(tiny_model.state_dict()), tiny_model)
    assert not result.found and result.ok and result.causes == ()
