"""A dict keyed by tuples (``{(epoch, step): loss}``, per-pair metrics) converts losslessly to every
format and back; it stopped every conversion ("dict key of type tuple cannot be stored"), and
``--drop-unrepresentable`` did not get past a key it could not store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402
from tests.ops.convert.strict import assert_identical  # noqa: E402


def _state() -> dict[str, Any]:
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(3)},
            "history": {(0, 10): 1.25, (1, 20): 0.75, (2, ("val", 0.5)): torch.ones(2), 7: "x"}}


@pytest.mark.parametrize("middle", ["mid.safetensors", "mid.pth", "mid.dcp"])
def test_tuple_keys_round_trip(tmp_path: Path, middle: str) -> None:
    src = tmp_path / "src.pt"
    torch.save(_state(), src)
    mid, back = tmp_path / middle, tmp_path / "back.pth"
    to = "dcp" if middle.endswith(".dcp") else None
    assert convert_checkpoint(str(src), str(mid), to=to).ok
    assert convert_checkpoint(str(mid), str(back)).ok
    loaded = torch.load(back, weights_only=True)
    assert_identical(torch.load(src, weights_only=True), loaded)
    assert list(loaded["history"]) == [(0, 10), (1, 20), (2, ("val", 0.5)), 7]


def test_a_key_with_no_encoding_is_dropped_on_request(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(2), "k": {frozenset([1]): 3, "kept": 1}}, src)
    out = tmp_path / "out.safetensors"
    result = convert_checkpoint(str(src), str(out), drop_unrepresentable=True)
    assert result.ok and result.dropped == ("k.frozenset({1})",)
    back = tmp_path / "back.pth"
    assert convert_checkpoint(str(out), str(back)).ok
    assert torch.load(back, weights_only=True)["k"] == {"kept": 1}
