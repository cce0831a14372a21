"""Tensors whose elements overlap in memory (``expand``, ``unfold``, ``as_strided``) survive every
conversion path as views of one storage, with the original strides and values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.ops.convert.strict import assert_identical  # noqa: E402
from tests.ops.convert.test_lossless import PATHS, run_path  # noqa: E402


def overlapping_views() -> dict[str, Any]:
    torch.manual_seed(2)
    base = torch.randn(4, 6)
    row = torch.randn(5)
    return {"base": base, "expanded": torch.randn(2).expand(3, 2),
            "windows": row.unfold(0, 3, 1), "row": row,
            "strided": torch.as_strided(base, (3, 3), (1, 1)),
            "bools": torch.tensor([True, False]).expand(2, 2),
            "half": torch.randn(3, dtype=torch.float16).expand(2, 3)}


@pytest.mark.parametrize("path", list(PATHS))
def test_overlapping_views_round_trip(tmp_path: Path, path: str) -> None:
    src = tmp_path / "src.pth"
    torch.save(overlapping_views(), src)
    expected = torch.load(src, weights_only=True)
    back = run_path(tmp_path, src, PATHS[path])
    assert_identical(expected, back)
    assert back["expanded"].stride() == (0, 1)
    assert back["windows"].untyped_storage().data_ptr() == back["row"].untyped_storage().data_ptr()
