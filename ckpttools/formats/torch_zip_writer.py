"""Writing a ``torch.save`` zip archive without torch.

The layout matches ``torch.serialization._save`` of torch 2.x: records ``data.pkl``,
``.format_version``, ``.storage_alignment``, ``byteorder``, ``data/<key>`` (one per storage,
stored uncompressed with its data 64-byte aligned), ``version`` and ``.data/serialization_id``
under one top folder. ``data.pkl`` is pickled here by hand: each tensor is
``torch._utils._rebuild_tensor_v2((storage persistent id), offset, size, stride, False,
OrderedDict())`` with persistent id ``("storage", torch.FloatStorage, key, "cpu", numel)``, and
``_rebuild_tensor_v3`` with ``torch.storage.UntypedStorage`` for dtypes that have no legacy
storage class (float8, uint16 ...), exactly as torch writes them. Storage bytes are streamed
from their source with buffered reads (the zip needs their CRC-32).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckpttools.entries import RawSource
from ckpttools.formats.bytecopy import CHUNK, Progress, SourceFiles, TensorData, _no_progress
from ckpttools.formats.bytecopy import tensor_bytes

ALIGNMENT = 64
ARCHIVE = "archive"

# torch.storage._dtype_to_storage_type_map: dtypes that keep a legacy <Type>Storage class
LEGACY_STORAGE = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "bfloat16": "BFloat16Storage", "complex128": "ComplexDoubleStorage",
    "complex64": "ComplexFloatStorage",
}


@dataclass(frozen=True)
class TensorSlot:
    """A tensor in the object tree: a view of storage ``key`` (dtype ``dtype``, ``numel``)."""

    key: str
    dtype: str
    numel: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _Global:
    module: str
    name: str

    def __call__(self, *args: Any) -> Any:  # save_reduce wants a callable; never called
        raise TypeError(f"{self.module}.{self.name} is a pickle reference only")


@dataclass(frozen=True)
class _StorageId:
    key: str
    dtype: str
    numel: int


class _TorchPickler(pickle._Pickler):  # type: ignore[name-defined, misc]
    """Pickles a tree whose tensors are ``TensorSlot``s the way torch's pickler would."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=2)
        self._globals: dict[tuple[str, str], _Global] = {}
        self._storages: dict[str, _StorageId] = {}

    def _global(self, module: str, name: str) -> _Global:
        return self._globals.setdefault((module, name), _Global(module, name))

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not _StorageId:
            return None
        legacy = LEGACY_STORAGE.get(obj.dtype)
        cls = (self._global("torch", legacy) if legacy
               else self._global("torch.storage", "UntypedStorage"))
        numel = obj.numel if legacy else obj.numel * _itemsize(obj.dtype)
        return ("storage", cls, obj.key, "cpu", numel)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is not TensorSlot:
            return NotImplemented
        sid = self._storages.setdefault(obj.key, _StorageId(obj.key, obj.dtype, obj.numel))
        args: tuple[Any, ...] = (sid, obj.offset, tuple(obj.shape), tuple(obj.stride), False,
                                 OrderedDict())
        if obj.dtype in LEGACY_STORAGE:
            return (self._global("torch._utils", "_rebuild_tensor_v2"), args)
        return (self._global("torch._utils", "_rebuild_tensor_v3"),
                (*args, self._global("torch", obj.dtype)))

    def _save_raw_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_raw_global


def _itemsize(dtype: str) -> int:
    from ckpttools.formats.manifest import dtype_size

    return dtype_size(dtype)


def pickle_tree(obj: Any) -> bytes:
    """``data.pkl`` for ``obj`` (a tree of containers, scalars, numpy values and TensorSlots)."""
    buf = io.BytesIO()
    _TorchPickler(buf).dump(obj)
    return buf.getvalue()


def _zinfo(name: str, size: int, offset: int) -> tuple[zipfile.ZipInfo, bool]:
    info = zipfile.ZipInfo(f"{ARCHIVE}/{name}")
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
    base = offset + 30 + len(info.filename.encode()) + (20 if zip64 else 0)
    pad = -(base + 4) % ALIGNMENT
    # torch pads the local header's extra field with an "FB" record so the data is aligned
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info, zip64


def _write_record(zf: zipfile.ZipFile, fp: Any, name: str, data: bytes) -> None:
    info, zip64 = _zinfo(name, len(data), fp.tell())
    with zf.open(info, "w", force_zip64=zip64) as out:
        out.write(data)


def _write_storage(zf: zipfile.ZipFile, fp: Any, files: SourceFiles, data: TensorData,
                   on_progress: Progress) -> RawSource:
    info, zip64 = _zinfo(f"data/{data.name}", data.nbytes, fp.tell())
    with zf.open(info, "w", force_zip64=zip64) as out:
        start = fp.tell()
        if data.raw is not None:
            _copy_range(files, data.raw, out, on_progress)
        elif data.load is not None:
            t = data.load().detach().cpu().contiguous()
            view = tensor_bytes(t)
            for i in range(0, len(view), CHUNK):
                out.write(view[i:i + CHUNK])
                on_progress(min(CHUNK, len(view) - i))
            del t
    return RawSource(fp.name, start, data.nbytes)


def _copy_range(files: SourceFiles, src: RawSource, out: Any, on_progress: Progress) -> None:
    from ckpttools.errors import CorruptCheckpointError

    fd, buf = files.fd(src.path), bytearray(min(CHUNK, max(src.length, 1)))
    done = 0
    while done < src.length:
        view = memoryview(buf)[:min(CHUNK, src.length - done)]
        got = os.preadv(fd, [view], src.offset + done)
        if got <= 0:
            raise CorruptCheckpointError(f"{src.path}: file ends inside a tensor's data; "
                                         "the file is truncated")
        out.write(view[:got])
        done += got
        on_progress(got)


def write_torch_zip(path: str, obj: Any, storages: Sequence[TensorData], *,
                    on_progress: Progress = _no_progress) -> dict[str, RawSource]:
    """Write ``obj`` as ``torch.save`` would, at ``path`` (no fsync; atomic_output does it).

    Args:
        path: the file to create.
        obj: the tree; tensors are ``TensorSlot``s naming a storage of ``storages``.
        storages: one ``TensorData`` per storage (``name`` is the storage key, bytes are the
            whole storage), written in order.
        on_progress: called with the number of bytes written.

    Returns:
        Where each storage's bytes landed in ``path``, by key.
    """
    data_pkl = pickle_tree(obj)
    files = SourceFiles()
    placed: dict[str, RawSource] = {}
    try:
        with open(path, "wb") as fp, zipfile.ZipFile(fp, "w", zipfile.ZIP_STORED) as zf:
            _write_record(zf, fp, "data.pkl", data_pkl)
            _write_record(zf, fp, ".format_version", b"1")
            _write_record(zf, fp, ".storage_alignment", str(ALIGNMENT).encode())
            _write_record(zf, fp, "byteorder", b"little")
            for data in storages:
                placed[data.name] = _write_storage(zf, fp, files, data, on_progress)
            _write_record(zf, fp, "version", b"3\n")
            serial = "".join(random.choice("0123456789") for _ in range(40))
            _write_record(zf, fp, ".data/serialization_id", serial.encode())
    finally:
        files.close()
    return placed
