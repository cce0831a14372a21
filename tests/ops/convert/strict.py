"""A strict equality for what ``torch.load(weights_only=True)`` returns: exact container types,
key order, instance attributes (``_metadata``), scalars, and tensors' type, dtype, shape,
stride, offset, ``requires_grad``, bits and storage sharing."""

from __future__ import annotations

from typing import Any

import torch


def assert_identical(a: Any, b: Any) -> None:
    """Raise AssertionError naming the first path where ``a`` and ``b`` differ."""
    _Walk().same(a, b, "root")


class _Walk:
    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        self.back: dict[int, int] = {}

    def same(self, a: Any, b: Any, path: str) -> None:
        assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
        if isinstance(a, torch.Tensor):
            self.tensor(a, b, path)
        elif isinstance(a, dict):
            assert list(a) == list(b), f"{path}: keys or key order differ"
            assert vars(a) == vars(b) if hasattr(a, "__dict__") else True, f"{path}: attributes"
            for k in a:
                self.same(a[k], b[k], f"{path}[{k!r}]")
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), f"{path}: length"
            for i, (x, y) in enumerate(zip(a, b)):
                self.same(x, y, f"{path}[{i}]")
        elif isinstance(a, float) and a != a:
            assert b != b, path
        else:
            assert a == b, f"{path}: {a!r} vs {b!r}"

    def tensor(self, a: torch.Tensor, b: torch.Tensor, path: str) -> None:
        assert (a.dtype, a.shape, a.stride(), a.storage_offset(), a.requires_grad) == \
            (b.dtype, b.shape, b.stride(), b.storage_offset(), b.requires_grad), path
        if a.numel():
            assert torch.equal(a.detach().contiguous().reshape(-1).view(torch.uint8),
                               b.detach().contiguous().reshape(-1).view(torch.uint8)), path
        pa, pb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
        if a.untyped_storage().nbytes():  # storages pair one to one
            assert self.storages.setdefault(pa, pb) == pb, f"{path}: storage sharing"
            assert self.back.setdefault(pb, pa) == pa, f"{path}: storage sharing"
