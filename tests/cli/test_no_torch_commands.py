"""The metadata commands never import torch: inspect, scan, and diff A B when no values need
comparing (keys and shapes differ), in a fresh process, on files torch.save and safetensors
wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
PROBE = textwrap.dedent("""
    import json, sys
    from ckpttools.cli.main import main
    rc = main(json.loads(sys.argv[1]))
    print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}))
""")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    a, b, c = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.safetensors"
    torch.save({"model": {"w": torch.randn(3, 2), "b": torch.zeros(3)}, "epoch": 2}, a)
    torch.save({"model": {"w": torch.randn(4, 2), "extra": torch.zeros(1)}, "epoch": 3}, b)
    save_file({"w": torch.randn(5, 2)}, str(c))
    return {"a": str(a), "b": str(b), "c": str(c)}


@pytest.mark.parametrize("args, rc", [
    (["inspect", "{a}", "--format", "json"], 0),
    (["inspect", "{c}"], 0),
    (["scan", "{a}"], 0),
    (["diff", "{a}", "{b}"], 1),  # keys and shapes differ: nothing to compare by value
    (["diff", "{a}", "{c}", "--format", "json"], 1),
], ids=["inspect-json", "inspect-safetensors", "scan", "diff-pth", "diff-safetensors"])
def test_metadata_commands_never_import_torch(files: dict[str, str], args: list[str],
                                              rc: int) -> None:
    argv = [a.format(**files) for a in args]
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rc": rc, "torch": False}
