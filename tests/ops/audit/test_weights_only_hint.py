"""The ``add_safe_globals`` line that ``scan`` and ``inspect`` print runs as printed: after it,
``torch.load(weights_only=True)`` loads the checkpoint (checked in a fresh Python)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.audit.scan import scan_checkpoint
from ckpttools.ops.inspect import inspect_checkpoint

CONFIG_MODULE = """
import dataclasses

@dataclasses.dataclass
class TrainConfig:
    lr: float = 0.1
    name: str = "run"
"""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, text=True,
                          capture_output=True, timeout=120)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "trainmod.py").write_text(CONFIG_MODULE)
    done = _python("""
        import argparse, torch, trainmod
        torch.save({"w": torch.ones(2), "cfg": trainmod.TrainConfig(),
                    "args": argparse.Namespace(lr=0.1)}, "ckpt.pt")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "ckpt.pt"


def _loads_after(hint: str, path: Path) -> subprocess.CompletedProcess[str]:
    return _python(f"{hint}\nprint(sorted(torch.load({str(path)!r}, weights_only=True)))", path.parent)


def test_without_the_hint_torch_refuses(checkpoint: Path) -> None:
    assert _loads_after("import torch", checkpoint).returncode != 0


def test_scan_hint_makes_weights_only_load_work(checkpoint: Path) -> None:
    scanned = scan_checkpoint([str(checkpoint)]).files[0]
    assert scanned.safety == "unknown" and scanned.hint
    done = _loads_after(scanned.hint, checkpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['args', 'cfg', 'w']"


def test_inspect_hint_makes_weights_only_load_work(checkpoint: Path) -> None:
    with open_checkpoint(checkpoint) as reader:
        hint = inspect_checkpoint(reader).to_dict()["weights_only_hint"]
    done = _loads_after(hint, checkpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['args', 'cfg', 'w']"


@pytest.fixture
def numpy_checkpoint(tmp_path: Path) -> Path:
    done = _python("""
        import numpy as np, torch
        torch.save({"w": torch.ones(2), "f32": np.ones(3, dtype=np.float32), "i64": np.arange(3),
                    "scalar": np.float64(2.5), "mask": np.array([True]),
                    "rec": np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8")])}, "np.pt")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "np.pt"


def test_numpy_arrays_hint_makes_weights_only_load_work(numpy_checkpoint: Path) -> None:
    with open_checkpoint(numpy_checkpoint) as reader:
        hint = inspect_checkpoint(reader).to_dict()["weights_only_hint"]
    assert _loads_after("import torch", numpy_checkpoint).returncode != 0
    done = _loads_after(hint, numpy_checkpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['f32', 'i64', 'mask', 'rec', 'scalar', 'w']"


def test_no_torch_load_hint_for_a_dcp_folder(tmp_path: Path) -> None:
    # torch's DCP reader unpickles .metadata itself; torch.load of the folder is no way to read it
    done = _python("""
        import torch, torch.distributed.checkpoint as dcp
        dcp.save({"w": torch.ones(2), "step": 3}, checkpoint_id="ckpt")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    with open_checkpoint(tmp_path / "ckpt") as reader:
        assert inspect_checkpoint(reader).to_dict()["weights_only_hint"] is None


@pytest.mark.parametrize("value", ["collections.deque([1, 2])",
                                   "collections.defaultdict(list, a=[1])"])
def test_no_allow_line_for_classes_torch_cannot_rebuild(tmp_path: Path, value: str) -> None:
    # the printed add_safe_globals([collections.deque]) line did not let torch.load read the
    # file ("Can only extend lists"): no line does, and the hint says so instead
    done = _python(f"""
        import collections, torch
        torch.save({{"w": torch.ones(2), "extra": {value}}}, "c.pt")
        torch.serialization.add_safe_globals([collections.deque, collections.defaultdict, list])
        try:
            torch.load("c.pt", weights_only=True)
        except Exception as e:
            print("refused")
    """, tmp_path)
    assert done.stdout.strip() == "refused", done.stderr
    with open_checkpoint(tmp_path / "c.pt") as reader:
        hint = inspect_checkpoint(reader).to_dict()["weights_only_hint"]
    assert "add_safe_globals" not in hint and "cannot rebuild collections." in hint
    assert _loads_after(hint, tmp_path / "c.pt").returncode != 0  # as said: nothing reads it


def test_object_array_line_printed_by_the_cli_loads(tmp_path: Path, runner: CliRunner) -> None:
    # an object-dtype array's dtype is BUILT as numpy.dtypes.ObjectDType, which torch checks too
    done = _python("""
        import numpy as np, torch
        torch.save({"w": torch.ones(2), "meta": np.array([1, "a", None], dtype=object)}, "obj.pt")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "obj.pt"
    result = runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    line = lines[next(i for i, t in enumerate(lines) if "if you trust these classes" in t) + 1]
    loaded = _loads_after(line.strip(), path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "['meta', 'w']"
