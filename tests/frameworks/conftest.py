"""Session fixtures: each trainer layout is written once per test session by the real library.

The libraries run in a child process (``python -m tests.frameworks.writers``), so that their
process groups, seeds and warnings never leak into the test process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def write_layout(root: Path, name: str) -> Path:
    """Write layout ``name`` (see ``writers.main``) under ``root`` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "tests.frameworks.writers", str(root), name],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"writing {name} failed:\n{proc.stderr[-4000:]}")
    return root / name


@pytest.fixture(scope="session")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``layouts(name)``: the folder of layout ``name``, written on first use."""
    root = tmp_path_factory.mktemp("layouts")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            done[name] = write_layout(root, name)
        return done[name]

    return get


@pytest.fixture
def copy_of(tmp_path: Path) -> Callable[[Path], Path]:
    """A private copy of a layout folder, to delete pieces from."""

    def copy(src: Path) -> Path:
        dest = tmp_path / src.name
        shutil.copytree(src, dest)
        return dest

    return copy
