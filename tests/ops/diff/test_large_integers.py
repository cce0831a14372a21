"""diff A B of integer tensors past 2**53 (seeds, hashes, token ids, sample counters): float64
rounds them, so 2**62 and 2**62 + 1 compared equal and two different files were "OK
checkpoints match" at atol=0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diff.pair import CheckpointDiffResult, diff_checkpoints


def run(a: Path, b: Path, atol: float = 0.0) -> CheckpointDiffResult:
    with open_checkpoint(a) as ra, open_checkpoint(b) as rb:
        return diff_checkpoints(ra, rb, atol=atol)


CASES = {
    "int64": (torch.tensor([2 ** 62, 7]), torch.tensor([2 ** 62 + 1, 7])),
    "negative": (torch.tensor([-(2 ** 60) - 3]), torch.tensor([-(2 ** 60)])),
    # uint64 past 2**63 (torch has no arithmetic on it; its bits read as int64)
    "uint64": (torch.tensor([-(2 ** 63) + 5]).view(torch.uint64),
               torch.tensor([-(2 ** 63) + 6]).view(torch.uint64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_apart_is_a_difference(tmp_path: Path, case: str) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"seed": CASES[case][0]}, a)
    torch.save({"seed": CASES[case][1]}, b)
    strict = run(a, b)
    assert not strict.ok
    (pair,) = strict.tensors
    assert not pair.bitwise_equal and not pair.allclose
    assert pair.max_abs_diff in (1.0, 3.0)
    assert not run(a, b, atol=0.5).ok
    assert run(a, b, atol=3.0).ok  # within a tolerance that covers the true difference


def test_far_apart_keeps_its_magnitude(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"x": torch.tensor([2 ** 62, -(2 ** 62)])}, a)
    torch.save({"x": torch.tensor([-(2 ** 62), 2 ** 62])}, b)
    (pair,) = run(a, b).tensors
    assert pair.max_abs_diff == 2.0 ** 63  # past int64: float64's value, not a wrapped one
