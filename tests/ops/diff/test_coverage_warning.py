"""diff --model's coverage warning: a shape mismatch makes load_state_dict(strict=False) raise,
which the warning says, rather than "would load only 0% ... the rest keep their initialisation"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.ops.diff._case_checks import run_cli

MODEL = """
import torch

def net(classes=3):
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, classes))
"""


def _diff(tmp_path: Path, classes: int) -> dict:
    (tmp_path / "net.py").write_text(MODEL)
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 3)).state_dict(), tmp_path / "ckpt.pt")
    code, out = run_cli(["diff", str(tmp_path / "ckpt.pt"), "--model",
                         f"{tmp_path / 'net.py'}:net", "-a", f"classes={classes}",
                         "--format", "json"])
    assert code == 1
    return json.loads(out)


def test_a_head_of_another_size_warns_that_the_load_raises(tmp_path: Path) -> None:
    result = _diff(tmp_path, 5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))
    with pytest.raises(RuntimeError, match="size mismatch"):  # what the warning must say
        model.load_state_dict(torch.load(tmp_path / "ckpt.pt"), strict=False)
    assert result["warnings"] == ["strict=False would raise on 2 shape mismatches and load "
                                  "nothing; follow the fix plan"]
