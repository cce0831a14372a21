"""Checks every real case goes through: the JSON and text name the plan, the snippet runs as
pasted with only ``model`` defined, the remap command's output loads, diff and diagnose agree."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests._real_cases import Case


def model_args(case: Case) -> list[str]:
    return [a for arg in case.args for a in ("-a", arg)]


def run_cli(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(cli, args)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.stdout


def load_output(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)


def check_case(case: Case, tmp: Path) -> dict[str, Any]:
    """Run every check on ``case``; returns the JSON plan for case-specific assertions."""
    base = [str(case.path), "--model", case.spec, *model_args(case)]
    code, out = run_cli(["diff", *base, "--format", "json"])
    data = json.loads(out)
    plan = data["plan"]
    assert code == (0 if data["ok"] else 1)
    assert [s["kind"] for s in plan["steps"]] == list(case.kinds), plan["steps"]
    assert plan["strict"] is case.strict
    assert tuple(plan["left_initialised"]) == case.left_missing
    assert (plan["source"]["key"] or "") == case.key
    # every step shown changed the counts, and the last one's counts are the plan's
    counts = [plan["before"]] + [s["after"] for s in plan["steps"]]
    assert all(a != b for a, b in zip(counts, counts[1:]))
    if plan["steps"]:
        assert plan["steps"][-1]["after"] == plan["after"]
    _, text = run_cli(["diff", *base])
    assert all(s["summary"] in text for s in plan["steps"])
    # the snippet runs as pasted, and loads what it says
    model = case.model()
    exec(compile(plan["python"], "<snippet>", "exec"), {"model": model})
    if plan["command"]:
        _check_remap(case, plan, tmp)
    # diagnose --checkpoint shows the same plan, and every cause's fix is that plan
    _, diag = run_cli(["diagnose", "--checkpoint", *base, "--format", "json"])
    dj = json.loads(diag)
    assert dj["plan"] == plan
    assert all(c["fix"]["code"] == plan["python"] for c in dj["causes"])
    return plan


def _check_remap(case: Case, plan: dict[str, Any], tmp: Path) -> None:
    args = shlex.split(plan["command"])
    assert args[:2] == ["ckpttools", "remap"]
    out = tmp / ("remapped" + Path(args[3]).suffix)
    args[3] = str(out)
    code, _ = run_cli(args[1:])
    assert code == 0
    result = case.model().load_state_dict(load_output(out), strict=case.strict)
    assert sorted(result.missing_keys) == sorted(case.left_missing) and not result.unexpected_keys
