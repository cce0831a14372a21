"""Metadata records for what a checkpoint holds, read without tensor data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Safety = Literal["safe", "unsafe", "unknown"]


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's metadata.

    Attributes:
        key: flattened dotted path (``optimizer_state_dict.state.0.exp_avg``).
        dtype: torch dtype name without ``torch.`` (``float32``, ``bfloat16``).
        shape: the tensor's shape.
        nbytes: bytes of the tensor's own elements (numel times item size) stored in the file;
            0 for a meta tensor, which is saved with its shape and dtype only.
        location: where the bytes live (zip record, shard file, DCP chunk file).
        device: the device the tensor was saved from (``cuda:0``); data is always read on CPU.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    location: str = ""
    device: str = "cpu"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_NEW = object.__new__
_SET = object.__setattr__


def tensor_entry(key: str, dtype: str, shape: tuple[int, ...], nbytes: int, location: str = "",
                 device: str = "cpu") -> TensorEntry:
    """``TensorEntry(key, dtype, shape, nbytes, location, device)``, the same object (same
    ``__dict__``, equal, same hash), built without the frozen dataclass ``__init__``, which
    sets each field through ``object.__setattr__``: readers make one per tensor, and a
    listing of 20,000 tensors spent 25 ms in it."""
    out = _NEW(TensorEntry)
    _SET(out, "__dict__", {"key": key, "dtype": dtype, "shape": shape, "nbytes": nbytes,
                           "location": location, "device": device})
    return out


@dataclass(frozen=True)
class ObjectEntry:
    """A non-tensor value in a checkpoint (``epoch: 3``, ``loss: 0.45``, a config object).

    Attributes:
        key: flattened dotted path.
        type_name: ``int``, ``float``, ``str``, ``NoneType``, ``list`` ... or the qualified class name
            of an object the reader does not know (``argparse.Namespace``).
        value: a JSON-safe rendering of the value (the value itself for scalars and strings,
            a dict of recorded fields for unknown objects).
    """

    key: str
    type_name: str
    value: Any


Entry = TensorEntry | ObjectEntry


def tensor_dtypes_inside(value: Any) -> frozenset[str]:
    """The dtypes of the tensors a rendered ``ObjectEntry.value`` holds (a sparse or nested
    tensor's parts, rendered as ``{"__tensor__": dtype, ...}`` without their data)."""
    if isinstance(value, dict):
        own = value.get("__tensor__")
        inner = frozenset().union(*(tensor_dtypes_inside(v) for v in value.values()))
        return inner | {own} if isinstance(own, str) else inner
    if isinstance(value, list):
        return frozenset().union(*(tensor_dtypes_inside(v) for v in value))
    return frozenset()


@dataclass(frozen=True)
class GlobalRef:
    """A global (``module.name``) that a pickle references, and how safe calling it is."""

    module: str
    name: str
    safety: Safety
    pickle: str = ""  # which pickle inside the checkpoint referenced it (``archive/data.pkl``)
    reason: str = ""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class TensorRef:
    """Leaf of a reader's ``tree()`` standing for the tensor stored under ``key``."""

    key: str


@dataclass(frozen=True)
class ObjectPlaceholder:
    """Leaf of a reader's ``tree()`` for an object of a class the reader does not execute.

    ``args`` are the constructor arguments the pickle recorded and ``state`` what it would have
    set with ``__setstate__``/``__dict__``; both hold further tree nodes.
    """

    class_name: str
    args: tuple[Any, ...] = ()
    state: Any = None
    items: tuple[Any, ...] = field(default=())  # appended list items / set dict items, if any


@dataclass(frozen=True)
class RawSource:
    """A tensor whose bytes are one contiguous little-endian byte range of a file.

    Lets readers of metadata hand out tensor bytes without torch (mmap, ``copy_file_range``).
    """

    path: str
    offset: int
    length: int
