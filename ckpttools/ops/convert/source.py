"""What ``convert`` reads: a checkpoint as an encoded structure plus one handle per tensor.

A source comes from a reader (metadata only; bytes by ``raw_source`` or one ``load`` at a
time), or from a ckpttools manifest stored in the file (exact structure and sharing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ckpttools.entries import RawSource, TensorEntry, TensorRef
from ckpttools.errors import CorruptCheckpointError, KeyNotFoundError
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.manifest import (Manifest, Node, TensorLayout,
                                        UnrepresentableError, contiguous_stride, dtype_size)
from ckpttools.formats.manifest_tree import TreeEncoder
from ckpttools.formats.safetensors_file import user_metadata
from ckpttools.formats.writers.bytecopy import TensorData

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of the source: its layout, and its bytes by range (no torch) or by loading."""

    name: str
    layout: TensorLayout
    raw: RawSource | None
    load: Callable[[], torch.Tensor]
    crc: int | None = None  # the CRC-32 the source file records for exactly ``raw``'s bytes
    pieces: tuple[RawSource, ...] = ()  # else byte ranges that, end to end, are the tensor


@dataclass(frozen=True)
class Source:
    """The source checkpoint, ready to write: encoded tree and tensors by stored name."""

    root: Node
    tensors: dict[str, SourceTensor]
    dropped: tuple[str, ...] = ()
    # a safetensors source's own header metadata (kohya's training settings...), for a
    # safetensors output
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(_numel(t.layout.shape) * dtype_size(t.layout.dtype)
                   for t in self.tensors.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layout_of(t: torch.Tensor, storage_id: str) -> TensorLayout:
    """The layout of a real tensor, its storage named ``storage_id``."""
    import torch

    return TensorLayout(str(t.dtype).removeprefix("torch."), tuple(t.shape), tuple(t.stride()),
                        storage_id, t.storage_offset(), t.untyped_storage().nbytes(),
                        bool(t.requires_grad), isinstance(t, torch.nn.Parameter))


def _unique(name: str, taken: dict[str, Any]) -> str:
    if name not in taken:
        return name
    i = 1
    while f"{name}~{i}" in taken:
        i += 1
    return f"{name}~{i}"


def find_manifest(reader: CheckpointReader) -> Manifest | None:
    """The ckpttools manifest stored in a checkpoint ckpttools wrote, if any."""
    text = reader.manifest()
    return Manifest.from_json(text, reader.path) if text is not None else None


def source_from_manifest(reader: CheckpointReader, manifest: Manifest) -> Source:
    """A source whose structure and sharing come from a stored manifest."""
    tensors = {name: SourceTensor(name, layout, reader.raw_source(name),
                                  lambda n=name: reader.load(n))
               for name, layout in manifest.tensors.items()}
    return Source(manifest.root, tensors)


# formats whose entries' ``location`` names the storage a tensor views (sharing survives);
# elsewhere it names a file or chunk, so each tensor is its own storage
_SHARED_STORAGES = (Format.TORCH_ZIP, Format.TORCH_LEGACY)


def _tensor_layout(reader: CheckpointReader, entry: TensorEntry,
                   raw: RawSource | None, pieces: tuple[RawSource, ...] = ()) -> TensorLayout:
    storage = entry.location if reader.format in _SHARED_STORAGES and entry.location \
        else entry.key
    storage_source = getattr(reader, "storage_source", None)
    whole = storage_source(entry.key) if callable(storage_source) else None
    if whole is not None:
        ph = reader.placeholder(entry.key)  # type: ignore[attr-defined]  # the pickle's view
        return TensorLayout(entry.dtype, tuple(ph.shape), tuple(ph.stride), storage,
                            int(ph.storage_offset), whole.length, ph.requires_grad, ph.parameter)
    if (raw is not None or pieces) and reader.format not in _SHARED_STORAGES:
        return TensorLayout(entry.dtype, entry.shape, contiguous_stride(entry.shape), storage,
                            0, entry.nbytes)
    return layout_of(reader.load(entry.key), storage)


class _ShardLayouts:
    """Layouts of a sharded ``torch.save`` set, taken from each shard's own pickle: storage ids
    are qualified by the shard file, so tensors that shared a storage inside one shard (a tied
    embedding) still share it, and equal record names of different shards stay apart."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.entries: dict[str, dict[str, TensorEntry]] = {}

    def layout(self, entry: TensorEntry) -> TensorLayout:
        shard_name = entry.location
        shard = self.reader.shard(shard_name)
        if shard_name not in self.entries:
            self.entries[shard_name] = {e.key: e for e in shard.tensor_entries()}
        inner = self.entries[shard_name][entry.key]
        lay = _tensor_layout(shard, inner, shard.raw_source(inner.key))
        return replace(lay, storage=f"{shard_name}/{lay.storage}")


def _refuse_attributes(reader: CheckpointReader, key: str) -> None:
    placeholder = getattr(reader, "placeholder", None)
    if callable(placeholder) and getattr(placeholder(key), "has_attributes", False):
        raise UnrepresentableError(f"{key}: a tensor with Python attributes (or a tensor "
                                   "subclass) cannot be converted losslessly; keep the .pth")


def raw_pieces(reader: CheckpointReader, key: str) -> tuple[RawSource, ...]:
    """The byte ranges that assemble ``key`` from its chunks (multi-rank DCP, ZeRO-3), if the
    reader has them; empty otherwise."""
    found = getattr(reader, "raw_pieces", None)
    return (found(key) or ()) if callable(found) else ()


def recorded_crc(reader: CheckpointReader, key: str, raw: RawSource | None) -> int | None:
    """The CRC-32 a torch zip records for ``key``'s storage, when ``raw`` is that whole storage
    (a tensor owning its storage, as in every ``state_dict()`` without views)."""
    storage_crc = getattr(reader, "storage_crc", None)
    if raw is None or not callable(storage_crc):
        return None
    whole = reader.storage_source(key)  # type: ignore[attr-defined]  # zip readers have it
    return storage_crc(key) if whole == raw else None


def source_from_reader(reader: CheckpointReader, *, drop: bool = False) -> Source:
    """A source over a lazy reader (see ``_source_from_reader``), with the file's own metadata."""
    return replace(_source_from_reader(reader, drop=drop), metadata=user_metadata(reader))


def _source_from_reader(reader: CheckpointReader, *, drop: bool = False) -> Source:
    """A source over a lazy reader: the reader's tree, its keys as tensor names.

    Storage sharing is taken from each entry's ``location`` (the storage record for torch
    files); layouts come from the pickle's placeholders and the zip reader's storage ranges,
    from the header for other raw sources, else from one lazily loaded tensor at a time.
    """
    manifest = find_manifest(reader)
    if manifest is not None:
        return source_from_manifest(reader, manifest)
    entries = {e.key: e for e in reader.tensor_entries()}
    tensors: dict[str, SourceTensor] = {}
    shards = _ShardLayouts(reader) if reader.format is Format.TORCH_SHARDED else None

    def name_of(value: Any, path: str) -> str | None:
        if not isinstance(value, TensorRef):
            return None
        entry = entries.get(value.key)
        if entry is None:
            raise CorruptCheckpointError(f"{reader.path}: tree names tensor {value.key} the entries lack; "
                            "the checkpoint is inconsistent")
        _refuse_attributes(reader, entry.key)
        if entry.device == "meta":  # torch.save of a meta-device model: a shape, no bytes
            raise UnrepresentableError(
                f"{reader.path}: {entry.key} is a meta tensor, saved without data, so there is "
                "nothing to convert; load real weights into the model and save it again")
        raw = reader.raw_source(entry.key)
        pieces = raw_pieces(reader, entry.key) if raw is None else ()
        layout = shards.layout(entry) if shards else _tensor_layout(reader, entry, raw, pieces)
        tensors[entry.key] = SourceTensor(entry.key, layout, raw,
                                          lambda k=entry.key: reader.load(k),
                                          recorded_crc(reader, entry.key, raw), pieces)
        return entry.key

    encoder = TreeEncoder(name_of, drop=drop)
    root = encoder.encode(reader.tree()) or {"t": "none"}
    return Source(root, tensors, tuple(encoder.dropped))


def select_key(source: Source, key: str) -> Source:
    """The part of ``source`` under dotted ``key``; tensor names lose the ``key.`` prefix.

    Raises:
        CkptError: nothing lives at ``key``.
    """
    node = _subnode(source.root, key.split("."))
    if node is None:
        raise KeyNotFoundError(f"{key}: no such key in the checkpoint; run ckpttools inspect to list keys")
    from ckpttools.formats.manifest import iter_nodes

    prefix = key + "."
    renamed: dict[str, SourceTensor] = {}
    for n in iter_nodes(node):
        if n["t"] == "tensor":
            old = n["v"]
            new = _unique(old[len(prefix):] if old.startswith(prefix) else old, renamed)
            renamed[new] = replace(source.tensors[old], name=new)
            n["v"] = new
    return Source(node, renamed, source.dropped, source.metadata)


def _subnode(node: Node, parts: list[str]) -> Node | None:
    if not parts:
        return json.loads(json.dumps(node))  # a copy: select_key renames tensors in place
    if node["t"] in ("dict", "odict"):
        for n in range(len(parts), 0, -1):  # dict keys may contain dots: longest match first
            head = ".".join(parts[:n])
            for k, v in node["v"]:
                if "v" in k and str(k["v"]) == head:
                    found = _subnode(v, parts[n:])
                    if found is not None:
                        return found
    elif node["t"] in ("list", "tuple") and parts[0].isdigit():
        if int(parts[0]) < len(node["v"]):
            return _subnode(node["v"][int(parts[0])], parts[1:])
    return None


@contextmanager
def open_source(path: str, *, trust: bool = False, drop: bool = False) -> Iterator[Source]:
    """Open ``path`` as a conversion source; the reader stays open inside the block.

    Raises:
        CkptError: the checkpoint cannot be read.
    """
    from ckpttools.formats.registry import open_checkpoint

    with open_checkpoint(path, trust=trust) as reader:
        yield source_from_reader(reader, drop=drop)


def tensor_data(t: SourceTensor) -> TensorData:
    """What the writers need for one tensor: its own contiguous bytes."""
    lay = t.layout
    nbytes = _numel(lay.shape) * dtype_size(lay.dtype)
    raw = t.raw if t.raw is not None and t.raw.length == nbytes else None
    pieces = t.pieces if raw is None and sum(p.length for p in t.pieces) == nbytes else ()
    return TensorData(t.name, lay.dtype, lay.shape, nbytes, raw=raw, load=t.load,
                      crc=t.crc if raw is not None else None, pieces=pieces)


def output_manifest(source: Source) -> Manifest:
    """The manifest describing ``source`` as written."""
    return Manifest(source.root, {n: t.layout for n, t in source.tensors.items()})
