"""The real cases of issue #12, built with the real libraries from configs (no downloads):
the plan is right, its snippet runs, its remap output loads, and diff and diagnose agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._real_cases import build
from tests.ops.diff._case_checks import check_case, model_args, run_cli

WRAPPED = [f"{w}-{d}-{lay}" for w in ("compile", "ddp") for d in ("ckpt", "model")
           for lay in ("flat", "nested")]


@pytest.mark.parametrize("name", [*WRAPPED, "batchnorm-era"])
def test_wrappers_and_batchnorm(name: str, tmp_path: Path) -> None:
    case = build(name, tmp_path)
    plan = check_case(case, tmp_path)
    if name.endswith("-model-flat") or name.endswith("-model-nested"):
        inner = "_orig_mod" if name.startswith("compile") else "module"
        assert plan["advice"][0]["code"] == f"model.{inner}.load_state_dict(sd)"
        # the advice runs too: load into the wrapped module instead of renaming keys
        sd = torch.load(case.path, weights_only=True)
        sd = sd["model"] if case.key else sd
        exec(plan["advice"][0]["code"], {"model": case.model(), "sd": sd})
    else:
        assert plan["advice"] == []  # a plain TinyNet gets no framework advice


def test_batchnorm_era_remap_output_loads_strictly(tmp_path: Path) -> None:
    case = build("batchnorm-era", tmp_path)
    code, out = run_cli(["diff", str(case.path), "--model", case.spec, "--format", "json"])
    plan = json.loads(out)["plan"]
    assert code == 1 and plan["steps"][0]["args"] == ["bn.num_batches_tracked"]
    assert "BatchNorm fills" in plan["command_note"]


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_diff_agrees_with_diagnose_first_line(layout: str, tmp_path: Path) -> None:
    case = build(f"ddp-ckpt-{layout}", tmp_path)
    base = [str(case.path), "--model", case.spec, *model_args(case)]
    _, diff_text = run_cli(["diff", *base])
    _, diag_text = run_cli(["diagnose", "--checkpoint", *base])
    plan_line = next(l for l in diff_text.splitlines() if l.startswith("Fix plan"))
    assert plan_line in diag_text.splitlines()


@pytest.mark.parametrize("name", ["norm-era", "norm-era-layerscale"])
def test_old_norm_names_are_renamed_not_dropped(name: str, tmp_path: Path) -> None:
    """gamma/beta become the norm's weight/bias (by convention, never by shape: both have one
    shape); a LayerScale's own ``gamma`` keeps its name; the loaded norm holds the saved values."""
    case = build(name, tmp_path)
    plan = check_case(case, tmp_path)
    norm = case.extra["norm"]
    rules = [r.split("=", 1) for r in plan["steps"][0]["args"]]
    if name == "norm-era":
        assert rules == [["\\.gamma$", ".weight"], ["\\.beta$", ".bias"]]
    else:  # a rule per module: a rule per leaf would rename ls.gamma too
        assert rules == [["^ln\\.gamma$", "ln.weight"], ["^ln\\.beta$", "ln.bias"]]
    saved = torch.load(case.path, weights_only=True)
    model = case.model()
    exec(compile(plan["python"], "<snippet>", "exec"), {"model": model})
    assert torch.equal(getattr(model, norm).weight.detach(), saved[f"{norm}.gamma"])
    assert torch.equal(getattr(model, norm).bias.detach(), saved[f"{norm}.beta"])
    if name == "norm-era-layerscale":
        assert torch.equal(model.ls.gamma.detach(), saved["ls.gamma"])


def test_remap_of_a_file_in_a_model_folder_writes_beside_the_folder(tmp_path: Path) -> None:
    """A weights file inside a model folder (save_pretrained's layout): the plan's remap
    command writes next to the folder; a second weights file inside it would be read with the
    first by every later diff or inspect of the folder."""
    from safetensors.torch import save_file

    from tests._models import tiny_net

    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"module." + k: v.contiguous() for k, v in tiny_net().state_dict().items()},
              str(folder / "model.safetensors"))
    code, out = run_cli(["diff", str(folder), "--model", "tests/_models.py:TinyNet",
                         "--format", "json"])
    command = json.loads(out)["plan"]["command"]
    dst = command.split()[3]
    assert dst == str(tmp_path / "model-fixed.safetensors"), command
    assert run_cli(command.split()[1:])[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert run_cli(["diff", dst, "--model", "tests/_models.py:TinyNet"])[0] == 0
