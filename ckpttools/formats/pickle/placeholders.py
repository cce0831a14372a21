"""The records the restricted pickle reader makes of torch's tensors, storages and dtypes,
and their item sizes; ``stand_ins`` builds them while a pickle is read."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex128": 16, "complex64": 8,
    "complex32": 4, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2,
    "uint32": 4, "uint64": 8, "bool": 1, "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1,
    "quint2x4": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1, "bits8": 1, "bits16": 2,
}
# torch.<Name>Storage -> dtype; newer files use UntypedStorage (bytes) plus an explicit dtype
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64",
                  "int": "int32", "short": "int16", "cfloat": "complex64",
                  "cdouble": "complex128", "chalf": "complex32"}


@dataclass(frozen=True, slots=True)
class TorchDtype:
    """A ``torch.<dtype>`` referenced as a value (``float32``)."""

    name: str


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """A torch storage named by a persistent id: its key, element dtype, size and device.

    ``numel`` counts elements of ``dtype`` (bytes for ``uint8``/untyped storages).
    """

    key: str
    dtype: str
    numel: int
    location: str

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE.get(self.dtype, 1)


@dataclass(frozen=True, slots=True)
class TensorPlaceholder:
    """A tensor as the pickle describes it: a view of a storage. ``storage_offset`` counts
    elements. ``layout`` is ``strided``, ``quantized`` or ``meta`` (no storage)."""

    storage_key: str | None
    dtype: str
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    device: str
    requires_grad: bool = False
    layout: str = "strided"
    parameter: bool = False  # rebuilt by torch._utils._rebuild_parameter (an nn.Parameter)
    has_attributes: bool = False  # Python attributes or a subclass (_rebuild_from_type_v2)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE.get(self.dtype, 1)

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    @property
    def span(self) -> int:
        """Elements of the storage the view reaches, counted from ``storage_offset``."""
        if self.numel == 0:
            return 0
        return 1 + sum((s - 1) * abs(t) for s, t in zip(self.shape, self.stride))


def _slot_setters(cls: type) -> tuple[Any, ...]:
    """The slot setters of a frozen slotted dataclass, in field order."""
    return tuple(getattr(cls, f.name).__set__ for f in fields(cls))


(_SET_KEY, _SET_DTYPE, _SET_OFFSET, _SET_SHAPE, _SET_STRIDE, _SET_DEVICE, _SET_GRAD,
 _SET_LAYOUT, _SET_PARAMETER, _SET_ATTRIBUTES) = _slot_setters(TensorPlaceholder)
_SET_STORAGE_KEY, _SET_STORAGE_DTYPE, _SET_STORAGE_NUMEL, _SET_STORAGE_LOCATION = _slot_setters(
    StorageInfo)
_NEW = object.__new__


def new_placeholder(storage_key: str | None, dtype: str, offset: int, shape: tuple[int, ...],
                    stride: tuple[int, ...], device: str, requires_grad: bool,
                    layout: str) -> TensorPlaceholder:
    """``TensorPlaceholder(...)`` with the two flags False, its slots set directly: the
    dataclass's frozen ``__init__`` costs twice as much, once per tensor (20,000 tensors)."""
    out = _NEW(TensorPlaceholder)
    _SET_KEY(out, storage_key)
    _SET_DTYPE(out, dtype)
    _SET_OFFSET(out, offset)
    _SET_SHAPE(out, shape)
    _SET_STRIDE(out, stride)
    _SET_DEVICE(out, device)
    _SET_GRAD(out, requires_grad)
    _SET_LAYOUT(out, layout)
    _SET_PARAMETER(out, False)
    _SET_ATTRIBUTES(out, False)
    return out


def new_storage_info(key: str, dtype: str, numel: int, location: str) -> StorageInfo:
    """``StorageInfo(key, dtype, numel, location)``, its slots set directly (one per tensor)."""
    out = _NEW(StorageInfo)
    _SET_STORAGE_KEY(out, key)
    _SET_STORAGE_DTYPE(out, dtype)
    _SET_STORAGE_NUMEL(out, numel)
    _SET_STORAGE_LOCATION(out, location)
    return out
