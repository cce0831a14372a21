"""Reader for legacy ``torch.save(..., _use_new_zipfile_serialization=False)`` files, without
torch for metadata.

Layout: five pickles back to back (magic number, protocol version, sys_info, the object with
storages as persistent ids, the sorted list of storage keys), then each storage in that order as
an int64 element count followed by its raw bytes. The pickles are walked from a map of the file;
tensor bytes are only touched by ``load``.
"""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Any

from ckpttools.entries import RawSource
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats import fileio
from ckpttools.formats.base import Format
from ckpttools.formats.pickle.stand_ins import ITEMSIZE, TensorPlaceholder
from ckpttools.formats.pickle.walk import WalkResult, walk_pickle
from ckpttools.formats.pickle.reader import PickledReader, tensor_from_bytes

if TYPE_CHECKING:
    import torch

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class TorchLegacyReader(PickledReader):
    """Reads the pre-1.6 ``torch.save`` layout; tensors are views of the mapped file."""

    format = Format.TORCH_LEGACY
    torch_mmap = False  # torch.load cannot map the legacy layout

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        self._map: mmap.mmap | None = None
        self._spans: dict[str, tuple[int, int]] | None = None
        data: Any
        with fileio.open_binary(self.path) as f:
            if fileio.is_remote_file(f):
                # the legacy layout interleaves pickles and storages: it is read whole
                data = self._map = bytearray(f.read())  # type: ignore[assignment]
            else:
                # a private copy-on-write map: loaded tensors are writable, the file never changes
                data = self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            self._read_pickles(data)
        except BaseException:
            self.close()
            raise

    def _walk(self, data: Any, offset: int, what: str) -> WalkResult:
        try:
            return walk_pickle(data, name=os.path.basename(self.path), offset=offset)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"{self.path}: {what}: {e}") from e

    def _read_pickles(self, data: mmap.mmap) -> None:
        magic = self._walk(data, 0, "magic number")
        if magic.tree != MAGIC_NUMBER:
            raise CorruptCheckpointError(f"{self.path}: bad magic number; not a legacy torch file")
        version = self._walk(data, magic.end, "protocol version")
        if version.tree != PROTOCOL_VERSION:
            raise CorruptCheckpointError(
                f"{self.path}: legacy protocol version {version.tree!r} is not supported")
        sys_info = self._walk(data, version.end, "sys_info")
        info = sys_info.tree if isinstance(sys_info.tree, dict) else {}
        self._little = info.get("little_endian", True) is True
        main = self._walk(data, sys_info.end, "object pickle")
        keys = self._walk(data, main.end, "storage keys")
        if not isinstance(keys.tree, list) or set(map(str, keys.tree)) != set(main.storages):
            raise CorruptCheckpointError(f"{self.path}: storage key list does not match the "
                                         "pickle; the file is damaged")
        self._keys = [str(k) for k in keys.tree]
        self._data_start = keys.end
        need = sum(8 + main.storages[k].nbytes for k in self._keys)
        if keys.end + need > len(data):
            raise CorruptCheckpointError(f"{self.path}: storages need {need} bytes after the "
                                         f"pickles, the file has {len(data) - keys.end}; "
                                         "the file is truncated")
        self._init_tree(main)

    def _location(self, ph: TensorPlaceholder) -> str:
        return f"storage {ph.storage_key}" if ph.storage_key is not None else ""

    def _storage_spans(self) -> dict[str, tuple[int, int]]:
        """Offset and byte length of each storage, from the element counts before each."""
        if self._spans is None:
            assert self._map is not None
            spans: dict[str, tuple[int, int]] = {}
            pos = self._data_start
            storages = self._walk_result.storages
            for key in self._keys:
                count = int.from_bytes(self._map[pos:pos + 8], "little", signed=True)
                nbytes = count * ITEMSIZE.get(storages[key].dtype, 1)
                if count != storages[key].numel or pos + 8 + nbytes > len(self._map):
                    raise CorruptCheckpointError(
                        f"{self.path}: storage {key} has a bad size ({count} elements); "
                        "the file is damaged")
                spans[key] = (pos + 8, nbytes)
                pos += 8 + nbytes
            self._spans = spans
        return self._spans

    def raw_source(self, key: str) -> RawSource | None:
        ph = self.placeholder(key)
        if not self._direct(ph) or not ph.is_contiguous:
            return None
        start, _ = self._storage_spans()[str(ph.storage_key)]
        return RawSource(self.path, start + ph.storage_offset * ITEMSIZE[ph.dtype], ph.nbytes)

    def load(self, key: str) -> torch.Tensor:
        ph = self.placeholder(key)
        if not self._direct(ph):
            return self._load_full(key)
        start, nbytes = self._storage_spans()[str(ph.storage_key)]
        self._check_span(ph, nbytes, f"storage {ph.storage_key}")
        return tensor_from_bytes(self._map, start, nbytes, ph)

    def close(self) -> None:
        self._close_map()
