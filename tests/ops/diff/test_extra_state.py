"""A module's non-tensor extra state (``get_extra_state``) is a key ``load_state_dict(strict=True)``
needs: diff --model counts it, and a plan that fixes a prefix runs as printed and loads it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.ops.diff._case_checks import run_cli

MODEL = """
import torch

class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.scale = {"amax": 1.0}

    def get_extra_state(self):
        return self.scale

    def set_extra_state(self, state):
        self.scale = state
"""


def _model(tmp_path: Path) -> tuple[str, type]:
    (tmp_path / "scaled.py").write_text(MODEL)
    scope: dict = {}
    exec(MODEL, scope)
    return f"{tmp_path / 'scaled.py'}:Scaled", scope["Scaled"]


def _diff(path: Path, spec: str) -> tuple[int, dict]:
    code, out = run_cli(["diff", str(path), "--model", spec, "--format", "json"])
    return code, json.loads(out)


def test_missing_extra_state_fails_as_torch_does(tmp_path: Path) -> None:
    spec, scaled = _model(tmp_path)
    state = scaled().state_dict()
    del state["_extra_state"]
    torch.save(state, tmp_path / "ckpt.pt")
    try:
        scaled().load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
        raised = False
    except RuntimeError as e:
        raised = "_extra_state" in str(e)
    assert raised  # what diff must agree with
    code, result = _diff(tmp_path / "ckpt.pt", spec)
    assert code == 1 and not result["ok"]
    assert [m["key"] for m in result["missing"]] == ["_extra_state"]


def test_present_extra_state_matches(tmp_path: Path) -> None:
    spec, scaled = _model(tmp_path)
    model = scaled()
    model.scale = {"amax": 3.0}
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    code, result = _diff(tmp_path / "ckpt.pt", spec)
    assert code == 0 and result["ok"], result["verdict"]


def test_prefixed_extra_state_plan_runs_and_loads_it(tmp_path: Path) -> None:
    spec, scaled = _model(tmp_path)
    model = scaled()
    model.scale = {"amax": 3.0}
    torch.save(torch.nn.DataParallel(model).state_dict(), tmp_path / "dp.pt")
    code, result = _diff(tmp_path / "dp.pt", spec)
    plan = result["plan"]
    assert code == 1 and plan["steps"][0]["kind"] == "strip-prefix"
    assert plan["command"] is None and "_extra_state" in plan["command_note"]
    fresh = scaled()
    exec(plan["python"], {"model": fresh})
    assert fresh.scale == {"amax": 3.0}
