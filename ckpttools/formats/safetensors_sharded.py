"""Readers for sharded sets described by an ``*.index.json`` (transformers / huggingface_hub).

The index is ``{"metadata": {"total_size": ...}, "weight_map": {key: shard file}}`` beside the
shards. ``ShardedSafetensorsReader`` reads ``model.safetensors.index.json`` sets and
``ShardedTorchReader`` ``pytorch_model.bin.index.json`` sets (torch.save shards); both take the
index file or the folder holding it. Shards are opened on first use and checked against the
index: every listed shard exists, and index and shards name the same tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

from ckpttools.entries import Entry, GlobalRef, RawSource, TensorEntry
from ckpttools.errors import CorruptCheckpointError, UnknownFormatError
from ckpttools.formats import fileio
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.single_file import open_file

if TYPE_CHECKING:
    import torch


def find_index(folder: str, suffixes: tuple[str, ...]) -> str | None:
    """The ``*.index.json`` in ``folder`` that indexes shards ending in one of ``suffixes``:
    by name first (``model.safetensors.index.json``), else by its weight_map; None if none."""
    names = sorted(n for n in fileio.listdir(folder) if n.endswith(".index.json"))
    for name in names:
        if any(name.endswith(s + ".index.json") for s in suffixes):
            return fileio.join(folder, name)
    for name in names:
        try:
            files = set(read_index(fileio.join(folder, name))[0].values())
        except (CorruptCheckpointError, OSError):
            continue
        if files and all(f.endswith(suffixes) for f in files):
            return fileio.join(folder, name)
    return None


def read_index(path: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Parse an index file.

    Returns:
        ``(weight_map, metadata)``.

    Raises:
        CorruptCheckpointError: not JSON, or no ``weight_map`` of strings to strings.
    """
    try:
        with fileio.open_text(path) as f:
            index = json.load(f)
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{path}: index is not valid JSON ({str(e).splitlines()[0]}); "
                                     "the index file is damaged") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CorruptCheckpointError(f"{path}: index has no weight_map of tensor names to shard "
                                     "files; the index file is damaged")
    metadata = index.get("metadata")
    return weight_map, metadata if isinstance(metadata, dict) else {}


class _ShardedReader(CheckpointReader):
    """An index plus the shard files it names; subclasses say how a shard is opened."""

    shard_suffixes: ClassVar[tuple[str, ...]]

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        index = self.path
        if fileio.isdir(self.path):
            found = find_index(self.path, self.shard_suffixes)
            if found is None:
                raise UnknownFormatError(f"{self.path}: no *{self.shard_suffixes[0]}.index.json "
                                         f"in this folder; it is not a {self.format.value} set")
            index = found
        self.index_path = index
        self._weight_map, self._index_meta = read_index(index)
        self._folder = fileio.dirname(index)
        self._shards: dict[str, list[str]] = {}  # shard file -> its keys, in index order
        for key, shard in self._weight_map.items():
            self._shards.setdefault(shard, []).append(key)
        if fileio.is_url(index):
            from ckpttools.formats import remote

            # every shard's head (its safetensors header) at once, not one after another
            remote.prefetch([fileio.normjoin(self._folder, s) for s in self._shards])
        for shard in self._shards:
            self._check_shard(shard)
        self._open: dict[str, CheckpointReader] = {}
        self._entries: tuple[Entry, ...] | None = None
        self._warn_unlisted()

    def _warn_unlisted(self) -> None:
        """Name the shard files beside the index that it does not list (a stale shard of an
        earlier save): no loader reads them, transformers neither, so they are not read here;
        without a word, a check of the folder would pass them unseen. An ``s3://`` folder is
        listed as a local one; an HTTP folder has no listing, so nothing is said there."""
        stem, ext = os.path.splitext(posixpath.basename(self.index_path.replace(os.sep, "/"))
                                     [: -len(".index.json")])
        unlisted = sorted(n for n in fileio.listdir(self._folder) if n.startswith(f"{stem}-")
                          and n.endswith(ext) and n not in self._shards)
        if unlisted:
            more = f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
            warnings.warn(f"{self.path}: {unlisted[0]}{more} beside the index, which does "
                          "not list it; not read (loaders ignore it too)", stacklevel=2)

    def _check_shard(self, shard: str) -> None:
        full = fileio.normjoin(self._folder, shard)
        sep = "/" if fileio.is_url(full) else os.sep
        if os.path.isabs(shard) or not full.startswith(self._folder + sep):
            raise CorruptCheckpointError(f"{self.index_path}: shard {shard!r} lies outside the "
                                         "index's folder; shards must sit beside the index")
        if not fileio.isfile(full):
            raise CorruptCheckpointError(f"{self.index_path}: shard {shard} is missing; copy "
                                         "every file the index names into its folder")

    def _open_shard(self, path: str) -> CheckpointReader:
        """Open one shard file with the right reader."""
        raise NotImplementedError

    def shard(self, name: str) -> CheckpointReader:
        """The open reader of shard file ``name`` (as the index spells it)."""
        if name not in self._open:
            self._open[name] = self._open_shard(fileio.join(self._folder, name))
        return self._open[name]

    def shard_files(self) -> tuple[str, ...]:
        """The shard files the index names, sorted."""
        return tuple(sorted(self._shards))

    def _raw_entries(self) -> tuple[Entry, ...]:
        if self._entries is None:
            out: list[Entry] = []
            for name in self.shard_files():
                out.extend(self._shard_entries(name))
            self._entries = tuple(out)
        return self._entries

    def entries(self) -> tuple[Entry, ...]:
        view = self._manifest_view(self._raw_entries())
        return view[1] if view else self._raw_entries()

    def tree(self) -> Any:
        view = self._manifest_view(self._raw_entries())
        return view[0] if view else super().tree()

    def _shard_entries(self, name: str) -> list[Entry]:
        entries = self.shard(name).entries()
        found = {e.key for e in entries if isinstance(e, TensorEntry)}
        for key in self._shards[name]:
            if key not in found:
                raise CorruptCheckpointError(f"{self.index_path}: tensor {key!r} is missing from "
                                             f"shard {name}; the index and shards disagree")
        for key in found:
            if self._weight_map.get(key) != name:
                raise CorruptCheckpointError(f"{self.index_path}: shard {name} holds tensor "
                                             f"{key!r} that the index does not list there; "
                                             "the index and shards disagree")
        return [dataclasses.replace(e, location=name) if isinstance(e, TensorEntry) else e
                for e in entries]

    def load(self, key: str) -> torch.Tensor:
        name = self._weight_map[key]  # KeyError for an unknown key
        try:
            return self.shard(name).load(key)
        except KeyError as e:
            raise CorruptCheckpointError(f"{self.index_path}: tensor {key!r} is missing from "
                                         f"shard {name}; the index and shards disagree") from e

    def raw_source(self, key: str) -> RawSource | None:
        return self.shard(self._weight_map[key]).raw_source(key)

    def metadata(self) -> dict[str, str]:
        """The index's ``metadata`` (``total_size`` ...), values as strings."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self._index_meta.items()}

    def pickle_globals(self) -> tuple[GlobalRef, ...]:
        out: list[GlobalRef] = []
        for name in self.shard_files():
            out.extend(dataclasses.replace(g, pickle=f"{name}/{g.pickle}" if g.pickle else name)
                       for g in self.shard(name).pickle_globals())
        return tuple(out)

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()


class ShardedSafetensorsReader(_ShardedReader):
    """A ``model.safetensors.index.json`` set of safetensors shards."""

    format = Format.SAFETENSORS_SHARDED
    shard_suffixes = (".safetensors",)

    def _open_shard(self, path: str) -> CheckpointReader:
        from ckpttools.formats.safetensors_file import SafetensorsReader

        return SafetensorsReader(path, trust=self.trust)


class ShardedTorchReader(_ShardedReader):
    """A ``pytorch_model.bin.index.json`` set of ``torch.save`` shards (zip or legacy)."""

    format = Format.TORCH_SHARDED
    shard_suffixes = (".bin", ".pt", ".pth")

    def _open_shard(self, path: str) -> CheckpointReader:
        return open_file(path, trust=self.trust)
