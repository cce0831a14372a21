"""Writing a DCP ``.metadata`` pickle without torch.

``torch.distributed.checkpoint`` keeps a checkpoint's layout in ``.metadata``: a pickle of
``Metadata(state_dict_metadata, planner_data, storage_data, storage_meta, version)``. It is
written here with the pure-Python pickler and stand-ins that pickle as the real classes, opcode
for opcode as torch 2.13's ``FileSystemWriter.finish`` does: dataclasses as ``NEWOBJ`` + ``BUILD``
of their ``__dict__`` (``TensorProperties`` of its ``__getstate__`` tuple, ``_StorageInfo``
without ``transform_descriptors``), ``torch.Size`` and enums as ``REDUCE``, dtypes as globals.
So torch's own ``FileSystemReader.read_metadata()`` rebuilds real objects from it. ckpttools never
unpickles a ``.metadata`` file with a real class: it reads one with the restricted walker only
(``formats/dcp_dir.py``); torch's reader unpickles it without ``weights_only``.
"""

from __future__ import annotations

import io
import pickle
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DCP_VERSION = "1.0.0"  # filesystem.CURRENT_DCP_VERSION in torch 2.13
_META = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"


@dataclass(frozen=True)
class DcpItem:
    """One item of a DCP checkpoint: a whole tensor (``dtype`` set) or a bytes value (``None``),
    stored at ``offset``/``length`` of ``relative_path``."""

    fqn: str
    dtype: str | None
    shape: tuple[int, ...]
    relative_path: str
    offset: int
    length: int


@dataclass(frozen=True)
class PickleGlobal:
    """A global named in a pickle written by hand (``module.name``), never imported."""

    module: str
    name: str

    def __call__(self, *args: Any) -> Any:  # save_reduce wants a callable; never called
        raise TypeError(f"{self.module}.{self.name} is a pickle reference only")


@dataclass(eq=False)
class _Call:
    """Pickles as ``func(*args)`` (``REDUCE``)."""

    func: PickleGlobal
    args: tuple[Any, ...]


@dataclass(eq=False)
class _Object:
    """Pickles as ``cls.__new__(cls)`` then ``BUILD`` with ``state`` (what pickle does for a
    plain class instance); ``state`` None means no ``BUILD``."""

    cls: PickleGlobal
    state: Any


class _MetadataPickler(pickle._Pickler):  # type: ignore[name-defined, misc]
    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _Call:
            return (obj.func, obj.args)
        return NotImplemented

    def _save_global(self, obj: PickleGlobal) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def _save_object(self, obj: _Object) -> None:
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[PickleGlobal] = _save_global
    dispatch[_Object] = _save_object


class _Names:
    """One ``PickleGlobal`` per name, so the pickler memoizes each global once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], PickleGlobal] = {}

    def __call__(self, module: str, name: str) -> PickleGlobal:
        return self._cache.setdefault((module, name), PickleGlobal(module, name))

    def size(self, values: Sequence[int]) -> _Call:
        return _Call(self("torch", "Size"), (tuple(values),))

    def obj(self, name: str, state: Any, module: str = _META) -> _Object:
        return _Object(self(module, name), state)


def _tensor_metadata(g: _Names, item: DcpItem, dtype: str) -> _Object:
    layout = _Call(g("torch.serialization", "_get_layout"), ("torch.strided",))
    contiguous = _Call(g(_META, "_MEM_FORMAT_ENCODING"), (0,))  # TORCH_CONTIGUOUS_FORMAT
    props = g.obj("TensorProperties", (g("torch", dtype), layout, False, contiguous, False))
    chunk = g.obj("ChunkStorageMetadata", {"offsets": g.size([0] * len(item.shape)),
                                           "sizes": g.size(item.shape)})
    return g.obj("TensorStorageMetadata", {"properties": props, "size": g.size(item.shape),
                                           "chunks": [chunk]})


def _storage_entry(g: _Names, item: DcpItem) -> tuple[_Object, _Object]:
    index: dict[str, Any] = {"fqn": item.fqn, "index": None}
    if item.dtype is not None:
        index = {"fqn": item.fqn, "index": 0, "offset": g.size([0] * len(item.shape))}
    info = {"relative_path": item.relative_path, "offset": item.offset, "length": item.length}
    return g.obj("MetadataIndex", index), g.obj("_StorageInfo", info, module=_FS)


def dcp_metadata(items: Sequence[DcpItem], *, save_id: str | None = None) -> bytes:
    """The ``.metadata`` pickle for ``items`` (each a single-chunk tensor or a bytes value).

    Args:
        items: the checkpoint's items; their fqns are flat keys (DCP's flattened names).
        save_id: recorded in ``storage_meta``; a fresh UUID when None.

    Returns:
        Pickle bytes (protocol 4) that torch's ``FileSystemReader.read_metadata()`` turns into
        DCP's ``Metadata`` (torch unpickles it without ``weights_only``; ckpttools never does).
    """
    g = _Names()
    state_dict_metadata = {it.fqn: _tensor_metadata(g, it, it.dtype) if it.dtype is not None
                           else g.obj("BytesStorageMetadata", None) for it in items}
    storage_meta = g.obj("StorageMeta", {"checkpoint_id": None,
                                         "save_id": save_id or str(uuid.uuid4()),
                                         "load_id": None, "modules": []})
    meta = g.obj("Metadata", {"state_dict_metadata": state_dict_metadata,
                              "planner_data": {it.fqn: (it.fqn,) for it in items},
                              "storage_data": dict(_storage_entry(g, it) for it in items),
                              "storage_meta": storage_meta, "version": DCP_VERSION})
    buf = io.BytesIO()
    _MetadataPickler(buf, protocol=4).dump(meta)
    return buf.getvalue()
