"""The finite pass over mapped windows: every window is checked, whatever its alignment, and
a NaN or Inf anywhere (first element, a window's last, the tensor's last) is counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.audit import finite


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_nan_and_inf_in_any_window_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                fmt: str) -> None:
    monkeypatch.setattr(finite, "CHUNK_BYTES", (1 << 16) + 12)  # windows start off page bounds
    clean = torch.ones(3, 50_000)
    bad = torch.zeros(200_003, dtype=torch.float64)
    step = finite.CHUNK_BYTES // 8
    bad[0] = float("nan")
    bad[step - 1] = float("inf")  # the last element of the first window
    bad[step] = float("-inf")  # the first of the second
    bad[-1] = float("nan")  # the very last byte range of the file's data
    state = {"clean": clean, "bad": bad, "half": torch.full((7,), 2.0, dtype=torch.float16)}
    path = tmp_path / f"c.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, path)
    with open_checkpoint(str(path)) as reader:
        assert reader.raw_source("bad") is not None  # the mapped path is the one checked
        result = finite.check_finite(reader)
    assert result.status == "FAIL"
    assert result.details == ("bad: 2 NaN, 2 Inf of 200003",)


def test_a_clean_file_passes_and_leaves_no_map_open(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finite, "CHUNK_BYTES", 1 << 16)
    path = tmp_path / "c.pth"
    torch.save({"w": torch.randn(100_000), "b": torch.randn(3)}, path)
    with open_checkpoint(str(path)) as reader:
        result = finite.check_finite(reader)
    assert result.status == "PASS" and "2 floating tensors" in result.reason
    maps = Path("/proc/self/maps").read_text()
    assert str(path) not in maps  # every window was unmapped
