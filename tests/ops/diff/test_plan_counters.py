"""The fix plan's BatchNorm counter step is for a norm saved before torch 0.4.1 (its stats are
in the file, its num_batches_tracked is not), never for a norm the file lacks altogether."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.ops.diff._case_checks import run_cli

MODEL = """
import torch

def with_norm():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                               torch.nn.Linear(4, 2))
"""


def _plan(tmp_path: Path, state: dict[str, torch.Tensor]) -> dict:
    (tmp_path / "net.py").write_text(MODEL)
    torch.save(state, tmp_path / "ckpt.pt")
    code, out = run_cli(["diff", str(tmp_path / "ckpt.pt"), "--model",
                         f"{tmp_path / 'net.py'}:with_norm", "--format", "json"])
    assert code == 1
    return json.loads(out)["plan"]


def test_a_norm_absent_from_the_file_is_not_called_an_old_save(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # the same layers without the norm (a ReLU in its place): the whole norm is missing
    state = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                torch.nn.Linear(4, 2)).state_dict()
    plan = _plan(tmp_path, state)
    assert all(s["kind"] != "num-batches-tracked" for s in plan["steps"]), plan["steps"]
    assert "0.4.1" not in json.dumps(plan)
    assert plan["after"]["missing"] == 5  # 1.weight, 1.bias and the three buffers


def test_a_norm_saved_without_its_counter_still_gets_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (tmp_path / "net.py").write_text(MODEL)
    state = {k: v for k, v in torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).state_dict().items()
        if not k.endswith("num_batches_tracked")}
    plan = _plan(tmp_path, state)
    assert [s["kind"] for s in plan["steps"]] == ["num-batches-tracked"]
