"""Writing a ``torch.save`` zip archive without torch.

The layout matches ``torch.serialization._save`` of torch 2.x: records ``data.pkl``,
``.format_version``, ``.storage_alignment``, ``byteorder``, ``data/<key>`` (one per storage,
stored uncompressed with its data 64-byte aligned), ``version`` and ``.data/serialization_id``
under one top folder. ``data.pkl`` is pickled here by hand: each tensor is
``torch._utils._rebuild_tensor_v2((storage persistent id), offset, size, stride, False,
OrderedDict())`` with persistent id ``("storage", torch.FloatStorage, key, "cpu", numel)``, and
``_rebuild_tensor_v3`` with ``torch.storage.UntypedStorage`` for dtypes that have no legacy
storage class (float8, uint16 ...), exactly as torch writes them. The zip container is written
here too, straight to a file descriptor: storage bytes go by kernel copy while a second thread
reads the same range for the CRC-32, which is then patched into the record's local header.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ckpttools.entries import RawSource
from ckpttools.formats.writers.bytecopy import (Progress, SourceFiles, TensorData, _no_progress,
                                                 copy_pieces, copy_raw, copy_raw_crc, plan_url_reads,
                                                 write_all, write_tensor)
from ckpttools.formats.writers.dcp_metadata import PickleGlobal

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
    requires_grad: bool = False
    parameter: bool = False


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
        self._globals: dict[tuple[str, str], PickleGlobal] = {}
        self._storages: dict[str, _StorageId] = {}

    def _global(self, module: str, name: str) -> PickleGlobal:
        return self._globals.setdefault((module, name), PickleGlobal(module, name))

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
        if obj.parameter:
            # as nn.Parameter.__reduce_ex__: the data (requires_grad False), then the flag
            data = TensorSlot(obj.key, obj.dtype, obj.numel, obj.offset, obj.shape, obj.stride)
            return (self._global("torch._utils", "_rebuild_parameter"),
                    (data, obj.requires_grad, OrderedDict()))
        sid = self._storages.setdefault(obj.key, _StorageId(obj.key, obj.dtype, obj.numel))
        args: tuple[Any, ...] = (sid, obj.offset, tuple(obj.shape), tuple(obj.stride),
                                 obj.requires_grad, OrderedDict())
        if obj.dtype in LEGACY_STORAGE:
            return (self._global("torch._utils", "_rebuild_tensor_v2"), args)
        return (self._global("torch._utils", "_rebuild_tensor_v3"),
                (*args, self._global("torch", obj.dtype)))

    def _save_raw_global(self, obj: PickleGlobal) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[PickleGlobal] = _save_raw_global


def _itemsize(dtype: str) -> int:
    from ckpttools.formats.manifest import dtype_size

    return dtype_size(dtype)


def pickle_tree(obj: Any) -> bytes:
    """``data.pkl`` for ``obj`` (a tree of containers, scalars, numpy values and TensorSlots)."""
    buf = io.BytesIO()
    _TorchPickler(buf).dump(obj)
    return buf.getvalue()


_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_LIMIT = 0xFFFFFFFF
_DOS_DATE = (2020 - 1980) << 9 | 1 << 5 | 1  # fixed timestamp: the output depends on content only


@dataclass
class ZipEntry:
    name: bytes
    offset: int
    size: int
    crc: int = 0


class ZipArchiveWriter:
    """A stored-only zip written straight to a file descriptor, starting at byte ``base`` of it.

    Each record's local header is written with its size, data follows 64-byte aligned (an "FB"
    padding extra field, as torch writes), and the CRC-32 is patched into the header once the
    data is in. Zip64 fields are used for sizes and offsets past 4 GiB (``zip64`` forces them).
    Offsets inside the archive (``pos``, entries) count from ``base``, as a reader of the
    archive's own byte range sees them (a DCP item inside a ``.distcp`` file).
    """

    def __init__(self, fd: int, path: str, pool: Executor, *, base: int = 0, zip64: bool = False) -> None:
        self.fd, self.path, self.pool, self.base, self.pos, self.force64 = fd, path, pool, base, 0, zip64
        self.entries: list[ZipEntry] = []

    def _big(self, size: int) -> bool:
        return self.force64 or size >= _LIMIT

    def begin(self, name: str, size: int) -> ZipEntry:
        entry = ZipEntry(f"{ARCHIVE}/{name}".encode(), self.pos, size)
        zip64 = b""
        if self._big(size):
            zip64 = struct.pack("<HHQQ", 1, 16, size, size)
        base = self.pos + _LOCAL.size + len(entry.name) + len(zip64) + 4
        pad = -base % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        stored = _LIMIT if zip64 else size
        header = _LOCAL.pack(b"PK\x03\x04", 45 if zip64 else 20, 0, 0, 0, _DOS_DATE, 0,
                             stored, stored, len(entry.name), len(extra))
        self.write(header + entry.name + extra)
        self.entries.append(entry)
        return entry

    def end(self, entry: ZipEntry, crc: int) -> None:
        entry.crc = crc
        os.pwrite(self.fd, struct.pack("<L", crc), self.base + entry.offset + 14)

    def write(self, data: bytes | memoryview) -> None:
        write_all(self.fd, memoryview(data))
        self.pos += len(data)

    def record(self, name: str, data: bytes) -> None:
        self.end(self.begin(name, len(data)), zlib.crc32(data))
        self.write(data)

    def _central(self, e: ZipEntry) -> bytes:
        values = [v for v in (e.size, e.size) if self._big(e.size)]
        if self.force64 or e.offset >= _LIMIT:
            values.append(e.offset)
        extra = struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""
        size = _LIMIT if self._big(e.size) else e.size
        offset = _LIMIT if self.force64 or e.offset >= _LIMIT else e.offset
        return _CENTRAL.pack(b"PK\x01\x02", 45 if extra else 20, 45 if extra else 20, 0, 0, 0,
                             _DOS_DATE, e.crc, size, size, len(e.name), len(extra), 0, 0, 0, 0,
                             offset) + e.name + extra

    def finish(self) -> None:
        """Write the central directory and end records (zip64 ones when needed)."""
        start = self.pos
        self.write(b"".join(self._central(e) for e in self.entries))
        count, size = len(self.entries), self.pos - start
        if self.force64 or start >= _LIMIT or size >= _LIMIT or count >= 0xFFFF:
            at = self.pos
            self.write(_EOCD64.pack(b"PK\x06\x06", _EOCD64.size - 12, 45, 45, 0, 0, count,
                                    count, size, start))
            self.write(_EOCD64_LOCATOR.pack(b"PK\x06\x07", 0, at, 1))
            count, size, start = min(count, 0xFFFF), min(size, _LIMIT), min(start, _LIMIT)
            if self.force64:
                count, start = 0xFFFF, _LIMIT
        self.write(_EOCD.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))


def write_records(zf: ZipArchiveWriter, files: SourceFiles, data_pkl: bytes,
                  storages: Sequence[tuple[str, TensorData]], on_progress: Progress,
                  crcs: dict[str, int] | None = None) -> dict[str, RawSource]:
    """Write a ``torch.save`` archive's records in torch's order and finish it.

    Args:
        zf: the archive, empty so far.
        files: open source files for the storages' byte ranges.
        data_pkl: the pickled object tree.
        storages: (storage key, its bytes), written in order as ``data/<key>``.
        on_progress: called with the number of bytes written.
        crcs: when given, filled with each storage's CRC-32 by key (as computed while copying).

    Returns:
        Where each storage's bytes landed in the file, by key.
    """
    placed: dict[str, RawSource] = {}
    plan_url_reads([data for _, data in storages])
    zf.record("data.pkl", data_pkl)
    zf.record(".format_version", b"1")
    zf.record(".storage_alignment", str(ALIGNMENT).encode())
    zf.record("byteorder", b"little")
    for key, data in storages:
        placed[key] = _write_storage(zf, files, key, data, on_progress)
        if crcs is not None:
            crcs[key] = zf.entries[-1].crc
    zf.record("version", b"3\n")
    zf.record(".data/serialization_id", "".join(random.choice("0123456789") for _ in range(40)).encode())
    zf.finish()
    return placed


def _write_storage(zf: ZipArchiveWriter, files: SourceFiles, key: str, data: TensorData,
                   on_progress: Progress) -> RawSource:
    entry = zf.begin(f"data/{key}", data.nbytes)
    start = zf.pos
    if data.raw is not None:
        if data.raw.length != data.nbytes:
            raise ValueError(f"{data.name}: raw range of {data.raw.length} bytes for a "
                             f"{data.nbytes}-byte storage")
        if data.crc is not None:  # the source's zip records it: a plain kernel copy
            copy_raw(files, data.raw, zf.fd, on_progress=on_progress)
            crc = data.crc
        else:
            crc = copy_raw_crc(files, data.raw, zf.fd, zf.pool, on_progress=on_progress)
    elif data.pieces:
        crc = copy_pieces(files, data.pieces, zf.fd, on_progress=on_progress)
    elif data.load is not None:
        t = data.load()
        crc = write_tensor(t, zf.fd, crc=True, on_progress=on_progress)
        del t
    else:
        raise ValueError(f"{data.name}: no source for the storage's bytes")
    zf.pos += data.nbytes
    if os.lseek(zf.fd, 0, os.SEEK_CUR) != zf.base + zf.pos:
        raise ValueError(f"{data.name}: storage bytes written differ from its size")
    zf.end(entry, crc)
    return RawSource(zf.path, zf.base + start, data.nbytes)


def write_torch_zip(path: str, obj: Any, storages: Sequence[TensorData], *,
                    on_progress: Progress = _no_progress, zip64: bool = False,
                    crcs: dict[str, int] | None = None) -> dict[str, RawSource]:
    """Write ``obj`` as ``torch.save`` would, at ``path`` (no fsync; atomic_output does it).

    Args:
        path: the file to create.
        obj: the tree; tensors are ``TensorSlot``s naming a storage of ``storages``.
        storages: one ``TensorData`` per storage (``name`` is the storage key, bytes are the
            whole storage), written in order.
        on_progress: called with the number of bytes written.
        zip64: use zip64 fields for every record, not only past 4 GiB (for tests).
        crcs: when given, filled with each storage's CRC-32 by key.

    Returns:
        Where each storage's bytes landed in ``path``, by key.
    """
    data_pkl = pickle_tree(obj)
    files = SourceFiles()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pool = ThreadPoolExecutor(1, thread_name_prefix="crc32")
    try:
        zf = ZipArchiveWriter(fd, path, pool, zip64=zip64)
        return write_records(zf, files, data_pkl, [(data.name, data) for data in storages],
                             on_progress, crcs)
    finally:
        pool.shutdown()
        os.close(fd)
        files.close()
