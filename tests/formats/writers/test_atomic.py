"""The streaming file torch.save writes remap's output through: every byte kept, the disk
handed each chunk as it goes, a torch.load-able file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ckpttools.formats.writers.atomic import atomic_output, write_behind_file
from ckpttools.formats.writers.bytecopy import CHUNK


def test_write_behind_file_keeps_every_byte_of_uneven_writes(tmp_path: Path) -> None:
    parts = [os.urandom(n) for n in (1, CHUNK - 1, 3, 2 * CHUNK + 5, 0, 17)]
    out = tmp_path / "out"
    with write_behind_file(str(out)) as f:
        for part in parts:
            f.write(part)
        f.write(memoryview(bytearray(b"tail")))
    assert out.read_bytes() == b"".join(parts) + b"tail"


def test_torch_save_through_it_inside_atomic_output_loads_back(tmp_path: Path) -> None:
    state = {"a": torch.randn(3, 5), "b": torch.arange(CHUNK // 4, dtype=torch.int32)}
    dest = tmp_path / "out.pth"
    with atomic_output(str(dest)) as tmp:
        with write_behind_file(tmp) as f:
            torch.save(state, f)
    loaded = torch.load(dest, weights_only=True)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_an_error_inside_leaves_no_destination(tmp_path: Path) -> None:
    dest = tmp_path / "out.pth"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(str(dest)) as tmp:
            with write_behind_file(tmp) as f:
                f.write(b"partial")
                raise RuntimeError("boom")
    assert not dest.exists() and os.listdir(tmp_path) == []
