"""Reader for ``torch.save`` zip files (the default since torch 1.6), without torch for metadata.

The archive holds ``<folder>/data.pkl`` (the structure, tensors as persistent ids) and one
record ``<folder>/data/<key>`` per storage, stored uncompressed, so a tensor is a strided view
of one mapped byte range. Listing reads the pickle only; tensor records are neither read nor
CRC-checked until a tensor is loaded.
"""

from __future__ import annotations

import mmap
import os
import posixpath
import struct
from typing import TYPE_CHECKING, BinaryIO

from ckpttools.entries import GlobalRef, RawSource
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats import fileio
from ckpttools.formats import zip_records as zr
from ckpttools.formats.base import Format
from ckpttools.formats.pickle.stand_ins import ITEMSIZE, TensorPlaceholder
from ckpttools.formats.pickle.walk import WalkResult, walk_pickle
from ckpttools.formats.pickle.reader import PickledReader, tensor_from_bytes

if TYPE_CHECKING:
    import torch

def find_data_pickle(names: list[str]) -> str | None:
    """The record ``torch.load`` unpickles, found as torch's reader finds it: the archive's
    folder is that of the first central directory entry, and ``<folder>/data.pkl`` is matched
    case-insensitively (miniz's lookup). None when torch would find none."""
    if not names or "/" not in names[0]:
        return None
    want = names[0].split("/", 1)[0].lower() + "/data.pkl"
    return next((n for n in names if n.lower() == want), None)


class TorchZipReader(PickledReader):
    """Reads a ``torch.save`` zip archive: entries from ``data.pkl`` via the restricted walker,
    tensors from mapped records (one at a time, never the whole file)."""

    format = Format.TORCH_ZIP

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        self._map: mmap.mmap | None = None
        self._offsets: dict[str, int] = {}
        self._all_globals: tuple[GlobalRef, ...] | None = None
        self._file: BinaryIO = fileio.open_binary(self.path)
        try:
            self._size = zr.file_size(self._file)
            self._records = zr.cached_directory(self._file)  # detection read it already
        except (zr.ZipError, struct.error, UnicodeDecodeError, OSError) as e:
            self.close()
            raise CorruptCheckpointError(
                f"{self.path}: not a readable zip archive ({e}); the file is truncated "
                "or damaged") from e
        try:
            self._open_pickle()
        except BaseException:
            self.close()
            raise

    def _open_pickle(self) -> None:
        pkl = find_data_pickle(list(self._records))
        if pkl is None:
            raise CorruptCheckpointError(f"{self.path}: zip archive without data.pkl; "
                                         "not a torch.save file")
        self._pkl = pkl
        self.prefix = pkl[: -len(posixpath.basename(pkl))]
        order = self._records.get(self.prefix + "byteorder")
        if order is not None and self._read(order.name) not in (b"little", b"big"):
            raise CorruptCheckpointError(f"{self.path}: byteorder record is not 'little' or "
                                         "'big'; torch.load refuses it, the file is damaged")
        self._little = order is None or self._read(order.name) != b"big"
        self._check_version()
        self._init_tree(self._walk(pkl))
        self._check_records()

    def _check_version(self) -> None:
        """torch reads ``.data/version`` (else ``version``) as an integer from 1 to 10
        (caffe2/serialize/versions.h) and refuses the file otherwise."""
        record = self._records.get(self.prefix + ".data/version") or self._records.get(
            self.prefix + "version")
        if record is None:
            raise CorruptCheckpointError(f"{self.path}: no version record; torch.load refuses "
                                         "it, the file is damaged or not a torch.save file")
        text = self._read(record.name).strip()
        if not (text.isdigit() and 1 <= int(text) <= 10):
            raise CorruptCheckpointError(f"{self.path}: version record {text[:20]!r} is not a "
                                         "format version torch reads; the file is damaged")

    # ---- metadata ------------------------------------------------------------------------

    def _read(self, name: str) -> bytes:
        try:
            return zr.read_record(self.path, self._file, self._records[name])
        except (zr.ZipError, struct.error, OSError) as e:
            raise CorruptCheckpointError(f"{self.path}: {e}; the file is damaged") from e

    def _walk(self, name: str) -> WalkResult:
        data = self._read(name)
        try:
            return walk_pickle(data, name=name)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"{self.path}: {e}") from e

    def _location(self, ph: TensorPlaceholder) -> str:
        return f"{self.prefix}data/{ph.storage_key}" if ph.storage_key is not None else ""

    def _check_records(self) -> None:
        """Every storage the pickle names must have a record large enough (central directory
        only; no record bytes are read)."""
        for key, storage in self._walk_result.storages.items():
            name = f"{self.prefix}data/{key}"
            record = self._records.get(name)
            if record is None:
                raise CorruptCheckpointError(
                    f"{self.path}: record {name} is missing; the file is truncated or damaged")
            if record.file_size < storage.nbytes:
                raise CorruptCheckpointError(
                    f"{self.path}: record {name} holds {record.file_size} bytes, the pickle "
                    f"says {storage.nbytes}; the file is damaged")

    def pickle_globals(self) -> tuple[GlobalRef, ...]:
        """Globals of every ``.pkl`` in the archive, not only ``data.pkl``."""
        if self._all_globals is None:
            seen = {(g.module, g.name, g.pickle): g for g in self._walk_result.globals}
            for name in self._records:
                if name.endswith(".pkl") and name != self._pkl:
                    for g in self._walk(name).globals:
                        seen.setdefault((g.module, g.name, g.pickle), g)
            self._all_globals = tuple(seen.values())
        return self._all_globals

    # ---- tensor data ---------------------------------------------------------------------

    def _record(self, ph: TensorPlaceholder) -> tuple[zr.ZipRecord, int]:
        """The record holding ``ph``'s storage and the absolute offset of its bytes."""
        name = self._location(ph)
        record = self._records.get(name)
        if record is None:
            raise CorruptCheckpointError(f"{self.path}: record {name} is missing; "
                                         "the file is truncated or damaged")
        if name not in self._offsets and fileio.is_remote_file(self._file):
            self._fetch_offsets()
        if name not in self._offsets:
            try:
                self._offsets[name] = zr.data_offset(self._file, record)
            except zr.ZipError as e:
                raise CorruptCheckpointError(f"{self.path}: {e}; the file is damaged") from e
        start = self._offsets[name]
        if record.method == zr.ZIP_STORED and start + record.file_size > self._size:
            raise CorruptCheckpointError(f"{self.path}: record {name} runs past the end of "
                                         "the file; the file is truncated")
        return record, start

    def _fetch_offsets(self) -> None:
        """Over a URL, every stored record's local header at once (a request each would be
        one round trip per tensor); a damaged one is left to ``data_offset`` to report."""
        from ckpttools.formats import remote

        todo = [r for n, r in self._records.items() if n not in self._offsets
                and r.method == zr.ZIP_STORED]
        heads = remote.fetch_ranges(self.path, [(r.header_offset, r.header_offset + zr.LOCAL_HEADER_SIZE)
                                                for r in todo])
        for record, head in zip(todo, heads):
            try:
                self._offsets[record.name] = zr.offset_after(record, head)
            except zr.ZipError:
                pass

    def raw_source(self, key: str) -> RawSource | None:
        ph = self.placeholder(key)
        if not self._direct(ph) or not ph.is_contiguous:
            return None
        record, start = self._record(ph)
        if record.method != zr.ZIP_STORED:
            return None
        return RawSource(self.path, start + ph.storage_offset * ITEMSIZE[ph.dtype], ph.nbytes)

    def storage_source(self, key: str) -> RawSource | None:
        """The byte range of the whole storage tensor ``key`` views (its ``data/<n>`` record),
        or None when that record is not stored little-endian and uncompressed."""
        ph = self.placeholder(key)
        if not self._direct(ph):
            return None
        record, start = self._record(ph)
        if record.method != zr.ZIP_STORED:
            return None
        return RawSource(self.path, start, record.file_size)

    def storage_crc(self, key: str) -> int | None:
        """The CRC-32 the central directory records for the storage tensor ``key`` views, when
        that record is stored uncompressed (the CRC of the bytes ``storage_source`` names)."""
        ph = self.placeholder(key)
        if not self._direct(ph):
            return None
        record, _ = self._record(ph)
        return record.crc if record.method == zr.ZIP_STORED else None

    def load(self, key: str) -> torch.Tensor:
        ph = self.placeholder(key)
        if not self._direct(ph):
            return self._load_full(key)
        record, start = self._record(ph)
        self._check_span(ph, record.file_size, record.name)
        if record.method != zr.ZIP_STORED:
            return tensor_from_bytes(self._read(record.name), 0, record.file_size, ph).clone()
        if fileio.is_remote_file(self._file):
            self._file.seek(start)  # a URL: the record's bytes by one ranged request
            return tensor_from_bytes(bytearray(self._file.read(record.file_size)), 0, record.file_size, ph)
        if self._map is None:
            # a private copy-on-write map: tensors are writable, the file never changes
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        return tensor_from_bytes(self._map, start, record.file_size, ph)

    def close(self) -> None:
        self._close_map()
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
