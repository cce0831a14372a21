"""Reader for ``torch.distributed.checkpoint`` directories, without torch for metadata.

``.metadata`` is a pickle of DCP's ``Metadata``; it is read with the restricted walker only,
and its placeholders are interpreted: ``state_dict_metadata`` (flattened key ->
``TensorStorageMetadata``/``BytesStorageMetadata``), ``storage_data`` (``MetadataIndex`` ->
``_StorageInfo(relative_path, offset, length)``) and ``planner_data`` (flattened key -> path).
``FileSystemWriter`` writes every item (tensor chunk or bytes value) as a ``torch.save`` zip
blob at ``offset``/``length`` of a ``.distcp`` file; ``load`` reads only those byte ranges.
For a tensor stored as one chunk whose pickle is a contiguous view of its whole storage
(what ``FileSystemWriter`` and ckpttools write), ``raw_source`` gives the storage record's bytes
as a ``RawSource``, so that they are copied or compared in chunks instead of loaded. A tensor
saved by several ranks (FSDP, tensor parallel: several chunks) has ``raw_pieces``: the byte
ranges of every chunk's storage, in the whole tensor's row-major order, so a conversion copies
each into its place of the output and ``load`` reads them into one buffer.
"""

from __future__ import annotations

import functools
import io
import math
import os
import posixpath
from typing import TYPE_CHECKING, Any, BinaryIO

from ckpttools.entries import Entry, GlobalRef, ObjectEntry, ObjectPlaceholder, RawSource, TensorEntry, TensorRef
from ckpttools.errors import CorruptCheckpointError, UnsupportedError
from ckpttools.formats import fileio
from ckpttools.formats import zip_records as zr
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.manifest import MANIFEST_KEY
from ckpttools.formats.pickle.stand_ins import ITEMSIZE, TensorPlaceholder, TorchDtype, to_json
from ckpttools.formats.pickle.walk import WalkResult, walk_pickle
from ckpttools.formats.pickle.reader import tensor_from_bytes
from ckpttools.formats.pickle.stand_ins import type_name
from ckpttools.formats.ranges import read_pieces, tile_pieces
from ckpttools.formats.torch_zip import find_data_pickle

if TYPE_CHECKING:
    import torch

_META = "torch.distributed.checkpoint.metadata."


def _state(node: Any, cls: str) -> dict[str, Any]:
    if not isinstance(node, ObjectPlaceholder) or not node.class_name.endswith(cls):
        raise ValueError(f"expected {cls}, found {type_name(node)}")
    return node.state if isinstance(node.state, dict) else {}


class DcpReader(CheckpointReader):
    """Reads a DCP checkpoint directory; tensors are assembled from their chunks."""

    format = Format.DCP

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        meta_path = fileio.join(self.path, ".metadata")
        try:
            with fileio.open_binary(meta_path) as f:
                self._meta_walk = walk_pickle(f.read(), name=".metadata")
            self._parse(self._meta_walk.tree)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"{self.path}: {e}") from e
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptCheckpointError(f"{self.path}: .metadata is not DCP metadata ({e}); "
                                         "the checkpoint is damaged") from e
        self._entries: tuple[Entry, ...] | None = None
        self._values: dict[str, Any] = {}
        self._value_globals: dict[str, tuple[GlobalRef, ...]] = {}

    def _parse(self, tree: Any) -> None:
        meta = _state(tree, "Metadata")
        self._items: dict[str, dict[str, Any]] = {}
        for fqn, item in meta["state_dict_metadata"].items():
            if isinstance(item, ObjectPlaceholder) and item.class_name.endswith("BytesStorageMetadata"):
                self._items[fqn] = {"bytes": True}
                continue
            state = _state(item, "TensorStorageMetadata")
            props = item.state["properties"]
            dtype = props.state[0] if isinstance(props.state, tuple) else _state(props, "TensorProperties")["dtype"]
            chunks = [_state(c, "ChunkStorageMetadata") for c in state["chunks"]]
            self._items[fqn] = {"dtype": dtype.name if isinstance(dtype, TorchDtype) else str(dtype),
                                "size": tuple(state["size"]), "chunks": chunks}
        storage = meta["storage_data"]
        pairs = storage.items if isinstance(storage, ObjectPlaceholder) else tuple(storage.items())
        self._storage: dict[tuple[str, tuple[int, ...] | None], dict[str, Any]] = {}
        for index, info in pairs:
            idx = _state(index, "MetadataIndex")
            offset = idx.get("offset")
            self._storage[(idx["fqn"], tuple(offset) if offset is not None else None)] = \
                _state(info, "_StorageInfo")
        self._planner = meta.get("planner_data") or {}

    def storage_ranges(self) -> list[tuple[str, str, int, int]]:
        """``(fqn, data file, offset, length)`` of every item: what the DCP loader hands to
        ``torch.load`` (bytes items) or reads as a ``torch.save`` blob (tensors)."""
        return [(fqn, fileio.join(self.path, str(info["relative_path"])), int(info["offset"]),
                 int(info["length"])) for (fqn, _), info in self._storage.items()]

    # ---- metadata ------------------------------------------------------------------------

    def _chunk_info(self, fqn: str, offsets: tuple[int, ...] | None) -> dict[str, Any]:
        info = self._storage.get((fqn, offsets))
        if info is None:
            raise CorruptCheckpointError(f"{self.path}: no storage recorded for {fqn}; "
                                         "the checkpoint is damaged")
        return info

    def value_names(self) -> tuple[str, ...]:
        """The FQNs of the bytes items (non-tensor values, the ckpttools manifest)."""
        return tuple(fqn for fqn, item in self._items.items() if item.get("bytes"))

    def manifest(self) -> str | None:
        """ckpttools keeps a converted checkpoint's manifest as a bytes entry."""
        if self._items.get(MANIFEST_KEY, {}).get("bytes"):
            value = self._value(MANIFEST_KEY)
            return value if isinstance(value, str) else None
        return None

    def entries(self) -> tuple[Entry, ...]:
        view = self._manifest_view(self._raw_entries())
        return view[1] if view else self._raw_entries()

    def _raw_entries(self) -> tuple[Entry, ...]:
        if self._entries is None:
            out: list[Entry] = []
            for fqn, item in self._items.items():
                if item.get("bytes"):
                    value = self._value(fqn)
                    out.append(ObjectEntry(fqn, type_name(value), to_json(value)))
                    continue
                files = sorted({self._chunk_info(fqn, tuple(c["offsets"]))["relative_path"]
                                for c in item["chunks"]})
                numel = 1
                for d in item["size"]:
                    numel *= d
                out.append(TensorEntry(fqn, item["dtype"], item["size"],
                                       numel * ITEMSIZE.get(item["dtype"], 1), ",".join(files)))
            self._entries = tuple(out)
        return self._entries

    def _value(self, fqn: str) -> Any:
        if fqn not in self._values:
            blob = self._read_range(self._chunk_info(fqn, None))
            walk = self._walk_blob(blob, fqn)[0]
            self._values[fqn], self._value_globals[fqn] = walk.tree, walk.globals
        return self._values[fqn]

    def tree(self) -> Any:
        view = self._manifest_view(self._raw_entries())
        if view:
            return view[0]
        root: dict[Any, Any] = {}
        for fqn, item in self._items.items():
            path = self._planner.get(fqn) or (fqn,)
            node = root
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = self._value(fqn) if item.get("bytes") else TensorRef(fqn)
        return _lists(root)

    def pickle_globals(self) -> tuple[GlobalRef, ...]:
        """The globals of ``.metadata`` and of every non-tensor value's pickle, each once."""
        for fqn, item in self._items.items():
            if item.get("bytes"):
                self._value(fqn)
        seen: dict[tuple[str, str], GlobalRef] = {}
        for g in (*self._meta_walk.globals, *(g for gs in self._value_globals.values() for g in gs)):
            seen.setdefault((g.module, g.name), g)
        return tuple(seen.values())

    # ---- tensor data ---------------------------------------------------------------------

    def _read_range(self, info: dict[str, Any]) -> bytearray:
        name = fileio.join(self.path, str(info["relative_path"]))
        if info.get("transform_descriptors"):
            raise UnsupportedError(f"{name}: transformed (compressed) DCP items are not supported")
        offset, length = int(info["offset"]), int(info["length"])
        buf = bytearray(length)
        try:
            with fileio.open_binary(name) as f:
                f.seek(offset)
                got = f.readinto(buf)
        except FileNotFoundError as e:
            raise CorruptCheckpointError(f"{name}: missing; the checkpoint is incomplete") from e
        if got != length:
            raise CorruptCheckpointError(f"{name}: item at {offset} is cut short; the file is "
                                         "truncated")
        return buf

    def _walk_blob(self, blob: bytearray, fqn: str) -> tuple[WalkResult, dict[str, Any], str]:
        """Walk the ``torch.save`` zip blob of one item."""
        f = io.BytesIO(blob)
        try:
            records = zr.read_directory(f, len(blob))
            pkl = find_data_pickle(list(records))
            if pkl is None:
                raise zr.ZipError("no data.pkl")
            walk = walk_pickle(zr.read_record("", f, records[pkl]), name=pkl)
        except (zr.ZipError, CorruptCheckpointError, UnicodeDecodeError) as e:
            raise CorruptCheckpointError(f"{self.path}: item {fqn} is damaged ({e})") from e
        return walk, records, pkl[: -len("data.pkl")]

    def load(self, key: str) -> torch.Tensor:
        import torch

        item = self._items.get(key)
        if item is None or item.get("bytes"):
            raise KeyError(key)
        pieces = self.raw_pieces(key) if len(item["chunks"]) > 1 else None
        if pieces is not None:  # straight into one buffer, no chunk held beside the tensor
            numel = math.prod(item["size"])
            buf = read_pieces(pieces, numel * ITEMSIZE.get(item["dtype"], 1))
            dtype = getattr(torch, item["dtype"])
            return (torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
                    ).reshape(item["size"])
        chunks = [(c, self._chunk(key, c)) for c in item["chunks"]]
        if len(chunks) == 1 and tuple(chunks[0][1].shape) == item["size"]:
            return chunks[0][1]
        out = torch.empty(item["size"], dtype=getattr(torch, item["dtype"]))
        for meta, tensor in chunks:
            region = tuple(slice(o, o + s) for o, s in zip(meta["offsets"], meta["sizes"]))
            out[region] = tensor
        return out

    def tensor_meta(self, key: str) -> tuple[str, tuple[int, ...]] | None:
        """``(dtype, shape)`` of tensor item ``key`` as ``.metadata`` records it, else None."""
        item = self._items.get(key)
        if item is None or item.get("bytes"):
            return None
        return item["dtype"], tuple(item["size"])

    def raw_source(self, key: str) -> RawSource | None:
        """The bytes of tensor ``key`` in its ``.distcp`` file, when stored as one whole,
        untransformed, contiguous chunk; else None (``raw_pieces`` or ``load``).

        Raises:
            CorruptCheckpointError: the item's archive is damaged or cut short.
        """
        item = self._items.get(key)
        if item is None or item.get("bytes") or len(item["chunks"]) != 1:
            return None
        chunk = item["chunks"][0]
        if tuple(chunk["sizes"]) != item["size"] or any(chunk["offsets"]):
            return None
        return self._chunk_bytes(key, chunk, item["dtype"])

    def raw_pieces(self, key: str) -> tuple[RawSource, ...] | None:
        """The byte ranges of the ``.distcp`` files whose concatenation is tensor ``key``, when
        it is stored in several chunks, each a plain contiguous tensor that together tile it
        (what FSDP and tensor-parallel saves write); else None (``raw_source`` or ``load``).

        Raises:
            CorruptCheckpointError: an item's archive is damaged or cut short.
        """
        item = self._items.get(key)
        if item is None or item.get("bytes") or len(item["chunks"]) < 2:
            return None
        chunks = []
        for chunk in item["chunks"]:
            sizes = tuple(chunk["sizes"])
            found = self._chunk_bytes(key, chunk, item["dtype"]) if math.prod(sizes) else \
                RawSource("", 0, 0)
            if found is None:
                return None
            chunks.append((tuple(chunk["offsets"]), sizes, found))
        return tile_pieces(tuple(item["size"]), ITEMSIZE.get(item["dtype"], 1), chunks)

    def _chunk_bytes(self, key: str, chunk: dict[str, Any], dtype: str) -> RawSource | None:
        """Where one chunk's tensor bytes lie, if its pickle is a plain contiguous tensor."""
        info = self._chunk_info(key, tuple(chunk["offsets"]))
        if info.get("transform_descriptors"):
            return None
        name = fileio.join(self.path, str(info["relative_path"]))
        base, length = int(info["offset"]), int(info["length"])
        try:
            with fileio.open_binary(name) as f:
                found = _storage_range(_Slice(f, base, length), length, dtype,
                                       tuple(chunk["sizes"]))
        except FileNotFoundError as e:
            raise CorruptCheckpointError(f"{name}: missing; the checkpoint is incomplete") from e
        except (zr.ZipError, CorruptCheckpointError, UnicodeDecodeError, ValueError) as e:
            raise CorruptCheckpointError(f"{self.path}: item {key} is damaged ({e})") from e
        return None if found is None else RawSource(name, base + found[0], found[1])

    def _chunk(self, fqn: str, chunk: dict[str, Any]) -> torch.Tensor:
        blob = self._read_range(self._chunk_info(fqn, tuple(chunk["offsets"])))
        walk, records, prefix = self._walk_blob(blob, fqn)
        ph = walk.tree
        if not isinstance(ph, TensorPlaceholder) or ph.storage_key is None:
            raise CorruptCheckpointError(f"{self.path}: item {fqn} does not hold a tensor")
        record = records.get(f"{prefix}data/{ph.storage_key}")
        if record is None:
            raise CorruptCheckpointError(f"{self.path}: item {fqn} lacks its data record")
        start = zr.data_offset(io.BytesIO(blob), record)
        need = (ph.storage_offset + ph.span) * ITEMSIZE.get(ph.dtype, 1)
        if start + record.file_size > len(blob) or need > record.file_size:
            raise CorruptCheckpointError(f"{self.path}: item {fqn} is cut short")
        return tensor_from_bytes(blob, start, record.file_size, ph)


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


@functools.lru_cache(maxsize=1024)
def _walked_tree(data: bytes, name: str) -> Any:
    """The tree of one item's pickle (a frozen placeholder, safe to share). Items of one dtype
    and shape pickle to the same bytes, so a folder of 30,000 small tensors walks a handful of
    pickles instead of 30,000 (each walk starts a deep-stack thread: about 1 ms)."""
    return walk_pickle(data, name=name).tree


def _storage_range(view: _Slice, length: int, dtype: str,
                   shape: tuple[int, ...]) -> tuple[int, int] | None:
    """Offset (in the item) and length of the tensor's bytes, if it is a plain view."""
    records = zr.read_directory(view, length)  # type: ignore[arg-type]
    pkl = find_data_pickle(list(records))
    if pkl is None:
        raise zr.ZipError("no data.pkl")
    ph = _walked_tree(bytes(zr.read_record("", view, records[pkl])), pkl)  # type: ignore[arg-type]
    if not isinstance(ph, TensorPlaceholder) or ph.storage_key is None:
        raise zr.ZipError("the item does not hold a tensor")
    if (ph.dtype, tuple(ph.shape)) != (dtype, shape) or ph.storage_offset \
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


def _lists(node: Any) -> Any:
    """DCP flattens lists with int path parts; turn dicts keyed 0..n-1 by ints back into lists."""
    if not isinstance(node, dict):
        return node
    out = {k: _lists(v) for k, v in node.items()}
    keys = list(out)
    if keys and all(type(k) is int for k in keys) and sorted(keys) == list(range(len(keys))):
        return [out[i] for i in range(len(keys))]
    return out
