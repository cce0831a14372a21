"""The finite pass over mapped windows: every window is checked, whatever its alignment, and
a NaN or Inf anywhere (first element, a window's last, the tensor's last) is counted."""

from __future__ import annotations

import tracemalloc
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


def test_a_mapped_file_allocates_no_read_buffers(tmp_path: Path) -> None:
    """The two read buffers (2 x 32 MB, zero-filled) serve files that cannot be mapped; a
    local file's pass never allocates them, which at 16 MB cost more than the check."""
    path = tmp_path / "c.pth"
    torch.save({"w": torch.randn(1000), "b": torch.randn(3)}, path)
    with open_checkpoint(str(path)) as reader:
        tracemalloc.start()
        try:
            result = finite.check_finite(reader)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.status == "PASS"
    assert peak < finite.CHUNK_BYTES // 8


def _sparse_and_nested() -> dict[str, torch.Tensor]:
    return {"coo": torch.tensor([[0.0, float("nan")], [1.0, 0.0]]).to_sparse(),
            "csr": torch.tensor([[0.0, 2.0], [float("inf"), 0.0]]).to_sparse_csr(),
            "nested": torch.nested.nested_tensor([torch.tensor([float("nan")]), torch.ones(3)]),
            "dense": torch.ones(2)}


@pytest.mark.filterwarnings("ignore:.*(Sparse CSR|nested tensors).*:UserWarning")
def test_tensors_inside_sparse_and_nested_records_are_named_unchecked(tmp_path: Path) -> None:
    path = tmp_path / "sparse.pt"
    torch.save(_sparse_and_nested(), path)
    with open_checkpoint(str(path)) as reader:
        result = finite.check_finite(reader)
    # the file holds NaN and Inf that the pass cannot read: never a PASS "all finite"
    assert result.status == "WARN"
    assert "cannot tell: 3 meta, sparse or nested tensors not checked (first: coo)" in result.reason
    assert result.details == ("coo: not checked (values inside torch._utils._rebuild_sparse_tensor)",
                              "csr: not checked (values inside torch._utils._rebuild_sparse_tensor)",
                              "nested: not checked (values inside torch._utils._rebuild_nested_tensor)")


@pytest.mark.filterwarnings("ignore:.*Sparse CSR.*:UserWarning")
def test_a_nonfinite_dense_tensor_still_fails_beside_a_sparse_one(tmp_path: Path) -> None:
    path = tmp_path / "sparse.pt"
    state = _sparse_and_nested()
    del state["nested"]
    state["dense"] = torch.tensor([float("nan")])
    torch.save(state, path)
    with open_checkpoint(str(path)) as reader:
        result = finite.check_finite(reader)
    assert result.status == "FAIL"
    assert result.details[0] == "dense: 1 NaN, 0 Inf of 1"
    assert "coo: not checked (values inside torch._utils._rebuild_sparse_tensor)" in result.details


def test_meta_tensors_are_named_unchecked_not_read(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)  # a model built on the meta device, saved as it is
    path = tmp_path / "meta.pt"
    torch.save({**model.state_dict(), "scale": torch.ones(2)}, path)
    with open_checkpoint(str(path)) as reader:
        result = finite.check_finite(reader)
    assert result.status == "WARN"  # no values to count: never "all finite" for them
    assert result.reason == ("1 floating tensor, all finite; cannot tell: 2 meta, sparse or nested "
                             "tensors not checked (first: weight)")
    assert result.details == ("weight: not checked (a meta tensor: saved without data)",
                              "bias: not checked (a meta tensor: saved without data)")
