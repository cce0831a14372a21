"""diff against a model: real models, real state_dicts written by torch.save, and the printed
fixes applied (the remap command run, then ``load_state_dict``)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.model_spec import ModelSignature, build_model, load_model_signature
from ckpttools.ops.model_diff import DiffResult, diff_against_model
from tests._models import TinyNet, tiny_net

SPEC = "tests/_models.py:TinyNet"


def meta_model(**kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return TinyNet(**kwargs)


def diff_file(path: Path, model: nn.Module | ModelSignature, key: str | None = None) -> DiffResult:
    with open_checkpoint(path) as reader:
        return diff_against_model(reader, model, key=key)


def apply_printed(command: str) -> Path:
    """Run a printed ``ckpttools remap ...`` command; return its output path."""
    from ckpttools.cli.main import main

    args = shlex.split(command)
    assert args[:2] == ["ckpttools", "remap"]
    assert main(args[1:]) == 0
    return Path(args[3])


def load_state(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, weights_only=True)
    for part in filter(None, prefix.split(".")):
        obj = obj[part]
    return obj


def run_snippet(code: str, model: nn.Module) -> None:
    """Execute a printed Python snippet as pasted, with only ``model`` defined."""
    exec(compile(code, "<snippet>", "exec"), {"model": model})


def test_dataparallel_prefix(make_checkpoint: Callable[..., Path]) -> None:
    model = tiny_net()
    path = make_checkpoint("torch-zip", nn.DataParallel(model).state_dict())
    result = diff_file(path, meta_model())
    assert not result.ok
    assert len(result.missing) == len(result.unexpected) == 13
    assert result.coverage == 0.0 and result.warnings
    plan = result.plan
    assert [s.kind for s in plan.steps] == ["strip-prefix"] and plan.strict
    assert plan.steps[0].after.text == "0 missing, 0 unexpected, 0 shape mismatches"
    assert "'module.'" in plan.steps[0].summary and "DataParallel" in plan.steps[0].summary
    assert "--strip-prefix module." in plan.command
    TinyNet().load_state_dict(load_state(apply_printed(plan.command)), strict=True)
    run_snippet(plan.python, TinyNet())


def test_lightning_nested_with_model_prefix(make_checkpoint: Callable[..., Path]) -> None:
    model = tiny_net()
    ckpt = {"epoch": 4, "global_step": 100, "state_dict": {f"model.{k}": v for k, v in
                                                           model.state_dict().items()},
            "optimizer_states": [torch.optim.SGD(model.parameters(), lr=0.1).state_dict()]}
    path = make_checkpoint("torch-zip", ckpt)
    result = diff_file(path, meta_model())
    assert result.state_dict == "state_dict"
    plan = result.plan
    assert [s.kind for s in plan.steps] == ["strip-prefix"]
    assert "--key state_dict --strip-prefix model." in plan.command
    assert "['state_dict']" in plan.python
    out = apply_printed(plan.command)
    TinyNet().load_state_dict(torch.load(out, weights_only=True))  # the state_dict alone
    run_snippet(plan.python, TinyNet())


def test_nested_training_checkpoint(make_checkpoint: Callable[..., Path]) -> None:
    model = tiny_net()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    path = make_checkpoint("torch-zip", {"model": model.state_dict(),
                                         "optimizer": opt.state_dict(), "epoch": 3})
    result = diff_file(path, meta_model())
    assert result.ok and result.state_dict == "model"
    assert result.plan.steps == () and "['model']" in result.plan.python
    out = apply_printed(result.plan.command)
    TinyNet().load_state_dict(load_state(out))
    run_snippet(result.plan.python, TinyNet())


def test_changed_classifier_head(make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", tiny_net().state_dict())
    result = diff_file(path, meta_model(num_classes=5))
    assert [m[0] for m in result.mismatched] == ["head.weight", "head.bias"]
    assert result.mismatched[0][1:] == ((10, 8), (5, 8))
    assert not result.missing and not result.unexpected
    assert result.coverage == 0.0  # strict=False raises on a shape mismatch too
    plan = result.plan
    assert [s.kind for s in plan.steps] == ["drop"] and not plan.strict
    assert plan.left == ("head.weight", "head.bias")
    state = load_state(apply_printed(plan.command))
    missing, unexpected = TinyNet(num_classes=5).load_state_dict(state, strict=False)
    assert (sorted(missing), unexpected) == (["head.bias", "head.weight"], [])
    run_snippet(plan.python, TinyNet(num_classes=5))


def test_deeper_model(make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", tiny_net().state_dict())
    result = diff_file(path, meta_model(depth=4))
    assert result.missing == ("blocks.2.0.weight", "blocks.2.0.bias",
                              "blocks.3.0.weight", "blocks.3.0.bias")
    assert not result.unexpected and not result.mismatched
    # nothing to rename or drop: no step is shown, the snippet loads with strict=False
    assert result.plan.steps == () and not result.plan.strict
    assert "strict=False" in result.plan.python
    run_snippet(result.plan.python, TinyNet(depth=4))
    loaded, total = result.loaded_params, result.total_params
    assert loaded == sum(p.numel() for p in tiny_net().parameters()) and total > loaded


def test_renamed_modules_keep_leaf_names(make_checkpoint: Callable[..., Path]) -> None:
    state = {k.replace("blocks.", "layers.").replace("head.", "fc.").replace("bn.", "norm."): v
             for k, v in tiny_net().state_dict().items()}
    path = make_checkpoint("torch-zip", state)
    result = diff_file(path, meta_model())
    plan = result.plan
    assert plan.strict and plan.after.text == "0 missing, 0 unexpected, 0 shape mismatches"
    assert {s.kind for s in plan.steps} == {"rename"}
    TinyNet().load_state_dict(load_state(apply_printed(plan.command)))
    run_snippet(plan.python, TinyNet())


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        self.lm_head.weight = self.embed.weight
        self.register_buffer("mask", torch.ones(4, 4), persistent=False)


def test_absent_tied_alias_fails_strict_unless_allowed() -> None:
    state = {"embed.weight": torch.zeros(16, 8)}
    with pytest.raises(RuntimeError, match="lm_head.weight"):
        TiedLM().load_state_dict(state)
    result = diff_against_model(state, TiedLM())
    assert not result.ok and not result.missing
    assert result.comparison.tied == (("lm_head.weight", "embed.weight"),)
    assert any("re-ties" in w for w in result.warnings)
    assert result.non_persistent == ("mask",)
    assert result.coverage == 1.0
    assert [s.kind for s in result.plan.steps] == ["tie"]
    assert diff_against_model(state, TiedLM(), allow_tied=True).ok


def test_checkpoint_carrying_a_non_persistent_buffer_is_unexpected() -> None:
    result = diff_against_model({"embed.weight": torch.zeros(16, 8), "lm_head.weight": torch.zeros(16, 8),
                                 "mask": torch.ones(4, 4)}, TiedLM())
    assert result.unexpected == ("mask",)
    assert [s.kind for s in result.plan.steps] == ["drop"] and result.plan.strict


def test_dtype_difference_does_not_fail(make_checkpoint: Callable[..., Path]) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in tiny_net().state_dict().items()}
    result = diff_file(make_checkpoint("torch-zip", state), meta_model())
    assert result.ok and len(result.comparison.dtype_differences) == 12


def test_json_signature_as_model(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ref = make_checkpoint("torch-zip", tiny_net().state_dict(), name="ref")
    with open_checkpoint(ref) as reader:
        tensors = [{"key": e.key, "dtype": e.dtype, "shape": list(e.shape)}
                   for e in reader.tensor_entries()]
    sig_path = tmp_path / "ref.json"
    sig_path.write_text(json.dumps({"path": str(ref), "tensors": tensors}))
    path = make_checkpoint("torch-zip", nn.DataParallel(tiny_net()).state_dict())
    result = diff_file(path, load_model_signature(str(sig_path)))
    assert result.plan.steps[0].kind == "strip-prefix" and result.plan.strict
    assert result.plan.advice == ()  # a signature has no framework to advise on


def test_json_result_is_stable_and_complete(make_checkpoint: Callable[..., Path]) -> None:
    result = diff_file(make_checkpoint("torch-zip", tiny_net().state_dict()), meta_model(depth=3))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["counts"]["missing"] == 2 and data["ok"] is False
    assert data["missing"][0] == {"key": "blocks.2.0.weight", "shape": [8, 8], "kind": "parameter"}


def test_build_model_on_meta_and_errors() -> None:
    from ckpttools.errors import SpecError

    model = build_model(SPEC, {"num_classes": 3})
    assert model.head.weight.device.type == "meta"
    for bad, fragment in [("nocolon", "must be"), ("tests/_models.py:Nope", "no attribute"),
                          ("tests/missing.py:X", "no such file"),
                          ("no_such_pkg_xyz.mod:X", "cannot import")]:
        with pytest.raises(SpecError, match=fragment):
            build_model(bad)
    with pytest.raises(SpecError, match="-a NAME=VALUE"):
        build_model(SPEC, {"bogus": 1})


def test_build_model_falls_back_to_cpu(tmp_path: Path) -> None:
    spec_file = tmp_path / "needs_data.py"
    spec_file.write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build(width=4):\n"
        "    probe = nn.Linear(1, 1)\n"
        "    scale = probe.weight.abs().item() * 0 + 1  # reads a parameter: impossible on meta\n"
        "    return nn.Linear(width, int(2 * scale))\n")
    with pytest.warns(UserWarning, match="building it on CPU"):
        model = build_model(f"{spec_file}:build", {"width": 3})
    assert model.weight.device.type == "cpu" and tuple(model.weight.shape) == (2, 3)
