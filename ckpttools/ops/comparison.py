"""Key sets of a checkpoint and a model compared the way ``load_state_dict`` compares them.

Shared by ``diff --model``, the fix planner and the checks that build on them; metadata only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ckpttools.ops.model_spec import ModelSignature

Shape = tuple[int, ...]
Table = dict[str, tuple[Shape, str]]  # checkpoint key -> (shape, dtype)


@dataclass(frozen=True)
class ShapeMismatch:
    """A key on both sides with different shapes (fails even with ``strict=False``)."""

    key: str
    checkpoint_shape: Shape
    model_shape: Shape

    @property
    def transposed(self) -> bool:
        """A 2-D weight stored the other way round: (in, out) where the model holds (out, in)."""
        return len(self.model_shape) == 2 and tuple(self.checkpoint_shape) == tuple(self.model_shape)[::-1]


@dataclass(frozen=True)
class DtypeDifference:
    """A key whose dtype differs; ``load_state_dict`` casts, so this never fails a load."""

    key: str
    checkpoint_dtype: str
    model_dtype: str


@dataclass(frozen=True)
class Comparison:
    """Key sets compared the way ``load_state_dict`` compares them."""

    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatches: tuple[ShapeMismatch, ...]
    dtype_differences: tuple[DtypeDifference, ...]
    tied: tuple[tuple[str, str], ...]  # (alias the checkpoint lacks, key it is loaded through)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shape_mismatches)


def compare_keys(ckpt: Mapping[str, tuple[Shape, str]], sig: ModelSignature) -> Comparison:
    """Compare checkpoint ``key -> (shape, dtype)`` with a model signature.

    Tied parameters present under one of their names are not missing; non-persistent buffers
    are never expected.
    """
    model = sig.by_key()
    owner = {k: g for g in sig.ties for k in g}
    matched, missing, mismatches, dtypes, tied = [], [], [], [], []
    for key, mk in model.items():
        if key not in ckpt:
            present = [k for k in owner.get(key, ()) if k in ckpt]
            (tied.append((key, present[0])) if present else missing.append(key))
            continue
        shape, dtype = ckpt[key]
        if tuple(shape) != mk.shape:
            mismatches.append(ShapeMismatch(key, tuple(shape), mk.shape))
            continue
        matched.append(key)
        if dtype != mk.dtype:
            dtypes.append(DtypeDifference(key, dtype, mk.dtype))
    unexpected = tuple(k for k in ckpt if k not in model)
    return Comparison(tuple(matched), tuple(missing), unexpected, tuple(mismatches),
                      tuple(dtypes), tuple(tied))
