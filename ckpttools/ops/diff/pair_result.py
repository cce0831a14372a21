"""The results of ``diff A B``: one comparison per tensor and per value, and the whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckpttools.entries import tensor_dtypes_inside
from ckpttools.units import plural

Shape = tuple[int, ...]

@dataclass(frozen=True)
class TensorComparison:
    """Values of one tensor key present on both sides with the same shape."""

    key: str
    dtype_a: str
    dtype_b: str
    bitwise_equal: bool
    max_abs_diff: float
    max_rel_diff: float
    allclose: bool
    rel_l2_change: float = 0.0  # ||B - A|| / ||A||; inf when A is all zeros and B is not
    compared: bool = True  # False: a side holds no data (a meta tensor), nothing was read

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
                "bitwise_equal": self.bitwise_equal, "max_abs_diff": self.max_abs_diff,
                "max_rel_diff": self.max_rel_diff, "allclose": self.allclose,
                "rel_l2_change": self.rel_l2_change, "compared": self.compared}


@dataclass(frozen=True)
class ObjectComparison:
    """A non-tensor entry on both sides (epoch, loss, hyperparameters)."""

    key: str
    value_a: Any
    value_b: Any

    @property
    def equal(self) -> bool:
        return bool(self.value_a == self.value_b)

    @property
    def opaque(self) -> bool:
        """Equal as rendered, but holding tensors whose data the rendering leaves out (a sparse
        or nested tensor): equal renderings do not prove equal values."""
        return self.equal and bool(tensor_dtypes_inside(self.value_a))


@dataclass(frozen=True)
class CheckpointDiffResult:
    """Two checkpoints compared.

    Attributes:
        path_a / path_b: the paths as given.
        only_a / only_b: keys (tensor or not) on one side only.
        shape_differences: ``(key, shape in A, shape in B)``.
        kind_differences: keys that are a tensor on one side and a value on the other.
        tensors: value comparisons for keys with equal shapes, in A's order.
        objects: non-tensor entries on both sides.
        atol / rtol: the tolerances of ``allclose``.
        structure: the first difference of the object graphs (container type, key order,
            attributes such as ``_metadata``), as ``"<path>: ... in A, ... in B"``; empty when
            equal or not comparable (see ``note``).
    """

    path_a: str
    path_b: str
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    shape_differences: tuple[tuple[str, Shape, Shape], ...]
    kind_differences: tuple[str, ...]
    tensors: tuple[TensorComparison, ...]
    objects: tuple[ObjectComparison, ...]
    atol: float
    rtol: float
    note: str = ""
    structure: tuple[str, ...] = ()

    @property
    def dtype_differences(self) -> tuple[TensorComparison, ...]:
        return tuple(t for t in self.tensors if t.dtype_a != t.dtype_b)

    @property
    def value_differences(self) -> tuple[TensorComparison, ...]:
        return tuple(t for t in self.tensors if not t.allclose)

    @property
    def object_differences(self) -> tuple[ObjectComparison, ...]:
        return tuple(o for o in self.objects if not o.equal)

    @property
    def uncompared(self) -> tuple[TensorComparison | ObjectComparison, ...]:
        """Tensors without data (meta) and values holding tensors whose data could not be
        compared (sparse, nested)."""
        return (tuple(t for t in self.tensors if not t.compared)
                + tuple(o for o in self.objects if o.opaque))

    @property
    def differs(self) -> bool:
        """A difference was found (keys, shapes, dtypes, values or structure)."""
        return bool(self.only_a or self.only_b or self.shape_differences
                    or self.kind_differences or self.dtype_differences
                    or self.value_differences or self.object_differences or self.structure)

    @property
    def ok(self) -> bool:
        """Same keys, shapes, dtypes and values within tolerance, same non-tensor values, and
        nothing left uncompared."""
        return not (self.differs or self.uncompared)

    @property
    def verdict(self) -> str:
        if self.ok:
            equal = sum(t.bitwise_equal for t in self.tensors)
            return (f"checkpoints match: {plural(len(self.tensors), 'tensor')} ({equal} bitwise equal), "
                    f"{plural(len(self.objects), 'value')}")
        if not self.differs:
            keys = ", ".join(o.key for o in self.uncompared[:3])
            return ("cannot tell whether the checkpoints match: no difference found, but the "
                    f"values of {plural(len(self.uncompared), 'meta, sparse or nested tensor')} "
                    f"({keys}) were not compared")
        parts = [f"{len(self.only_a)} only in A", f"{len(self.only_b)} only in B",
                 f"{len(self.shape_differences)} shape", f"{len(self.dtype_differences)} dtype",
                 f"{len(self.value_differences)} value", f"{len(self.object_differences)} "
                 "non-tensor differences"]
        if self.structure:
            parts.append("structure differs")
        return "checkpoints differ: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "verdict": self.verdict, "a": self.path_a, "b": self.path_b,
            "atol": self.atol, "rtol": self.rtol, "note": self.note,
            "structure_differences": list(self.structure),
            "only_a": list(self.only_a), "only_b": list(self.only_b),
            "shape_differences": [{"key": k, "shape_a": list(a), "shape_b": list(b)}
                                  for k, a, b in self.shape_differences],
            "kind_differences": list(self.kind_differences),
            "tensors": [t.to_dict() for t in self.tensors],
            "objects": [{"key": o.key, "a": o.value_a, "b": o.value_b, "equal": o.equal,
                         "compared": not o.opaque} for o in self.objects],
        }
