"""Byte ranges of whole tensors inside a DCP checkpoint, found without torch.

Each DCP tensor item is a ``torch.save`` archive at some offset of a ``.distcp`` file; for a
tensor stored as one chunk whose pickle is a contiguous view of its whole storage from offset 0
(what ``FileSystemWriter`` and ckpttools write), the tensor's bytes are that storage record's
bytes. ``DcpRangeReader.raw_source`` returns them as a ``RawSource`` so that they can be
compared or copied in chunks instead of loaded.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, BinaryIO

from ckpttools.entries import RawSource
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats import zip_records as zr
from ckpttools.formats.dcp_dir import DcpReader
from ckpttools.formats.pickle_stand import ITEMSIZE, TensorPlaceholder
from ckpttools.formats.pickle_walk import walk_pickle
from ckpttools.formats.torch_zip import find_data_pickle


class _Slice:
    """A read-only file view of ``length`` bytes at ``base`` of ``f`` (one item's archive)."""

    def __init__(self, f: BinaryIO, base: int, length: int) -> None:
        self.f, self.base, self.length, self.pos = f, base, length, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos if whence == 1 else self.length) + pos
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.length - self.pos if n < 0 else min(n, self.length - self.pos)
        self.f.seek(self.base + self.pos)
        data = self.f.read(max(n, 0))
        self.pos += len(data)
        return data


class DcpRangeReader(DcpReader):
    """A ``DcpReader`` that also gives whole tensors' byte ranges (``raw_source``)."""

    def tensor_meta(self, key: str) -> tuple[str, tuple[int, ...]] | None:
        """``(dtype, shape)`` of tensor item ``key`` as ``.metadata`` records it, else None."""
        item = self._items.get(key)
        if item is None or item.get("bytes"):
            return None
        return item["dtype"], tuple(item["size"])

    def raw_source(self, key: str) -> RawSource | None:
        """The bytes of tensor ``key`` in its ``.distcp`` file, when stored as one whole,
        untransformed, contiguous chunk; else None (``load`` it).

        Raises:
            CorruptCheckpointError: the item's archive is damaged or cut short.
        """
        item = self._items.get(key)
        if item is None or item.get("bytes") or len(item["chunks"]) != 1:
            return None
        chunk = item["chunks"][0]
        if tuple(chunk["sizes"]) != item["size"] or any(chunk["offsets"]):
            return None
        info = self._chunk_info(key, tuple(chunk["offsets"]))
        if info.get("transform_descriptors"):
            return None
        name = os.path.join(self.path, str(info["relative_path"]))
        base, length = int(info["offset"]), int(info["length"])
        try:
            with open(name, "rb") as f:
                found = _storage_range(_Slice(f, base, length), length, item)
        except FileNotFoundError as e:
            raise CorruptCheckpointError(f"{name}: missing; the checkpoint is incomplete") from e
        except (zr.ZipError, CorruptCheckpointError, UnicodeDecodeError, ValueError) as e:
            raise CorruptCheckpointError(f"{self.path}: item {key} is damaged ({e})") from e
        return None if found is None else RawSource(name, base + found[0], found[1])


def _storage_range(view: _Slice, length: int, item: dict[str, Any]) -> tuple[int, int] | None:
    """Offset (in the item) and length of the tensor's bytes, if it is a plain view."""
    records = zr.read_directory(view, length)  # type: ignore[arg-type]
    pkl = find_data_pickle(list(records))
    if pkl is None:
        raise zr.ZipError("no data.pkl")
    ph = walk_pickle(zr.read_record("", view, records[pkl]), name=pkl).tree  # type: ignore[arg-type]
    if not isinstance(ph, TensorPlaceholder) or ph.storage_key is None:
        raise zr.ZipError("the item does not hold a tensor")
    if (ph.dtype, tuple(ph.shape)) != (item["dtype"], item["size"]) or ph.storage_offset \
            or not ph.is_contiguous:
        return None
    prefix = pkl[: len(pkl) - len(posixpath.basename(pkl))]
    record = records.get(f"{prefix}data/{ph.storage_key}")
    if record is None or record.method != 0:
        return None
    start = zr.data_offset(view, record)  # type: ignore[arg-type]
    nbytes = ph.numel * ITEMSIZE.get(ph.dtype, 1)
    if nbytes > record.file_size or start + record.file_size > length:
        raise zr.ZipError("the tensor's data record is cut short")
    return start, nbytes
