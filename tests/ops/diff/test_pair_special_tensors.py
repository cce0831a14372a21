"""diff A B on tensors that are not plain strided ones, written by torch.save: sparse and
nested tensors (their values sit inside a pickled record) and quantized tensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diff.pair import CheckpointDiffResult, diff_checkpoints

pytestmark = [pytest.mark.filterwarnings("ignore:.*(Sparse CSR|nested tensors).*:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*quantize.*deprecated.*:UserWarning")]


def run(a: Path, b: Path) -> CheckpointDiffResult:
    with open_checkpoint(a) as ra, open_checkpoint(b) as rb:
        return diff_checkpoints(ra, rb)


def _pair(tmp_path: Path, make: object) -> tuple[Path, Path]:
    paths = tmp_path / "a.pt", tmp_path / "b.pt"
    for path, value in zip(paths, (1.0, 5.0)):
        torch.save({"x": torch.ones(2), "t": make(value)}, path)  # type: ignore[operator]
    return paths


MAKERS = {
    "coo": lambda v: torch.tensor([[0.0, v], [2.0, 0.0]]).to_sparse(),
    "csr": lambda v: torch.tensor([[0.0, v], [2.0, 0.0]]).to_sparse_csr(),
    "nested": lambda v: torch.nested.nested_tensor([torch.tensor([v]), torch.ones(3)]),
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_different_sparse_or_nested_values_are_never_a_match(tmp_path: Path, kind: str) -> None:
    a, b = _pair(tmp_path, MAKERS[kind])
    assert not torch.equal(torch.load(a)["t"].to_dense() if kind != "nested" else
                           torch.load(a)["t"].values(),
                           torch.load(b)["t"].to_dense() if kind != "nested" else
                           torch.load(b)["t"].values())
    result = run(a, b)
    assert not result.ok
    assert result.verdict.startswith("cannot tell"), result.verdict
    assert [o.key for o in result.uncompared] == ["t"]
    assert result.to_dict()["objects"][0]["compared"] is False


def _quantized(tmp_path: Path, scale_b: float) -> tuple[Path, Path]:
    paths = tmp_path / "qa.pt", tmp_path / "qb.pt"
    for path, scale in zip(paths, (0.1, scale_b)):
        q = torch.quantize_per_tensor(torch.tensor([1.0, 2.0, 3.0]), scale, 0, torch.quint8)
        torch.save({"q": q}, path)
    return paths


def test_quantized_pair_is_compared_in_a_fresh_process(tmp_path: Path) -> None:
    # the comparison crashed the interpreter (a uint8 view of a quantized tensor): run it
    # where a crash cannot take the test session with it
    a, b = _quantized(tmp_path, 0.2)
    code = ("import sys; from tests.ops.diff.test_pair_special_tensors import run; "
            "from pathlib import Path; r = run(Path(sys.argv[1]), Path(sys.argv[2])); "
            "print(r.ok, r.tensors[0].bitwise_equal)")
    done = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    # same dequantized values (1, 2, 3) under another scale: close, not bitwise equal
    assert done.stdout.split() == ["True", "False"]


def test_quantized_values_that_differ_are_found(tmp_path: Path) -> None:
    a, b = _quantized(tmp_path, 0.5)  # 0.5 cannot hold 1.0 and 3.0 as 0.1 does: 1.0 -> 1.0, 3.0 -> 3.0
    torch.save({"q": torch.quantize_per_tensor(torch.tensor([1.0, 2.5, 3.0]), 0.5, 0,
                                               torch.quint8)}, b)
    result = run(a, b)
    assert not result.ok
    assert result.value_differences[0].key == "q"
    assert result.value_differences[0].max_abs_diff == pytest.approx(0.5)


def test_identical_quantized_tensors_are_bitwise_equal(tmp_path: Path) -> None:
    a, b = _quantized(tmp_path, 0.1)
    result = run(a, b)
    assert result.ok and result.tensors[0].bitwise_equal


def test_meta_tensors_are_not_compared_and_say_so(tmp_path: Path) -> None:
    # a meta tensor is saved without data: diff crashed (aten::equal has no meta kernel)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path in (a, b):
        torch.save({"x": torch.ones(2), "m": torch.empty(3, 4, device="meta")}, path)
    result = run(a, b)
    assert not result.ok
    assert result.verdict.startswith("cannot tell"), result.verdict
    assert [t.key for t in result.uncompared] == ["m"]
    assert [t["compared"] for t in result.to_dict()["tensors"]] == [True, False]


@pytest.mark.parametrize("dtype", ["float4_e2m1fn_x2", "bits8"])
def test_dtypes_without_arithmetic_are_compared_by_bytes(tmp_path: Path, dtype: str) -> None:
    # torch cannot convert these to float: diff crashed ("copy_kernel" not implemented)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path, byte in ((a, 1), (b, 2)):
        torch.save({"p": torch.tensor([byte, 3], dtype=torch.uint8).view(getattr(torch, dtype))},
                   path)
    assert run(a, a).ok
    result = run(a, b)
    assert not result.ok and result.differs
    assert not result.tensors[0].bitwise_equal and not result.tensors[0].allclose


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint64])
def test_wide_integers_float64_cannot_tell_apart_differ(tmp_path: Path, dtype: torch.dtype) -> None:
    # 2**62 and 2**62 + 1 are one float64: a seed or an id that changed by one "matched"
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path, extra in ((a, 0), (b, 1)):
        torch.save({"seed": torch.tensor([2**62 + extra, 7], dtype=dtype)}, path)
    assert not torch.equal(torch.load(a)["seed"], torch.load(b)["seed"])
    result = run(a, b)
    assert not result.ok
    assert [t.key for t in result.value_differences] == ["seed"]
    assert result.tensors[0].max_abs_diff >= 1
