"""A model whose blocks were compiled one by one (``layers[i] = torch.compile(layers[i])``, as
torchtitan does) saves ``layers.3._orig_mod.attn.q.weight``. Every block has the same shapes, so
the plan's prefix replacements ``layers.3._orig_mod.`` -> ``layers.N.`` all fill as many keys;
the plan took the first one by the order of a set (another on every run) and loaded block 0's
tensors into block 1 with a plan it called proven. The names decide: ``layers.3._orig_mod.`` is
``layers.3.`` with the wrapper's part taken out. Values are compared, not only keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SPEC = '''
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 4)
'''


def _diff(tmp_path: Path, seed: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-m", "ckpttools", "diff", str(tmp_path / "blocks.pth"), "--model",
         f"{tmp_path / 'spec.py'}:Net", "--format", "json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    return json.loads(done.stdout)["plan"]


def test_blocks_compiled_one_by_one_go_back_to_their_own_index(tmp_path: Path) -> None:
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict[str, object] = {}
    exec(SPEC, namespace)
    torch.manual_seed(0)
    model = namespace["Net"]()  # type: ignore[operator]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for i, block in enumerate(model.layers):
        model.layers[i] = torch.compile(block, backend="eager")
    assert "layers.2._orig_mod.q.weight" in model.state_dict()
    torch.save(model.state_dict(), tmp_path / "blocks.pth")
    plans = [_diff(tmp_path, seed) for seed in (0, 1, 2, 3)]
    assert all(p == plans[0] for p in plans), "the plan changes with the hash seed"
    plan = plans[0]
    assert plan["strict"] and not plan.get("undecided"), plan
    fresh = namespace["Net"]()  # type: ignore[operator]
    exec(compile(str(plan["python"]), "<snippet>", "exec"), {"model": fresh})
    wrong = [k for k, v in fresh.state_dict().items() if not torch.equal(v, saved[k])]
    assert not wrong, wrong
