"""What the torch pickle readers (zip, legacy) share: entries and tree from a walked pickle,
tensors built from mapped storage bytes, and the guarded ``torch.load`` fallback."""

from __future__ import annotations

import math
import os
import pickle
import sys
import warnings
from abc import abstractmethod
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ckpttools.entries import (Entry, GlobalRef, ObjectEntry, ObjectPlaceholder, TensorRef,
                               tensor_entry)
from ckpttools.errors import CorruptCheckpointError, UnsafeCheckpointError
from ckpttools.formats import fileio
from ckpttools.formats.base import CheckpointReader
from ckpttools.formats.pickle.safety import is_torch_default
from ckpttools.formats.pickle.stand_ins import ITEMSIZE, TensorPlaceholder, to_json, type_name
from ckpttools.formats.pickle.walk import WalkResult
from ckpttools.keypaths import get_path, split_tensors

if TYPE_CHECKING:
    import torch


def flatten_tree(tree: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """``(tree with TensorRef leaves, [(key, TensorPlaceholder or value)])`` in file order."""
    return split_tensors(tree, lambda node: type(node) is TensorPlaceholder)


def _flat_tensors(tree: Any) -> tuple[dict[str, TensorRef], list[tuple[str, Any]]] | None:
    """``flatten_tree(tree)`` of a non-empty dict or ``OrderedDict`` of str keys and tensors
    only (a plain state_dict: 20,000 leaves), each ``TensorRef`` made without the dataclass
    ``__init__``; None for any other tree."""
    if type(tree) not in (dict, OrderedDict) or not tree or (
            set(map(type, tree.values())) != _PLACEHOLDER or set(map(type, tree)) != _STR):
        return None
    refs: dict[str, TensorRef] = {}
    for key in tree:
        ref = refs[key] = _NEW(TensorRef)
        _SET(ref, "__dict__", {"key": key})
    if type(tree) is OrderedDict:  # ``keypaths.same_mapping``: it keeps its _metadata
        refs = OrderedDict(refs)
        refs.__dict__.update(vars(tree))
    return refs, list(tree.items())


_PLACEHOLDER, _STR = {TensorPlaceholder}, {str}


def _span(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements a view of ``shape`` and ``stride`` reaches from its offset (``ph.span``): 0
    when it holds none, -1 when a size or stride is negative (``torch.load`` refuses it)."""
    if min((*shape, *stride), default=0) < 0:
        return -1
    if 0 in shape:
        return 0
    return 1 + sum((s - 1) * t for s, t in zip(shape, stride))
_NEW, _SET = object.__new__, object.__setattr__


def tensor_from_bytes(buf: Any, offset: int, length: int, ph: TensorPlaceholder) -> torch.Tensor:
    """View ``ph`` over the storage bytes ``buf[offset:offset + length]`` (no copy)."""
    import torch

    dtype = getattr(torch, ph.dtype)
    if ph.numel == 0:
        return torch.empty_strided(ph.shape, ph.stride, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only buffers (bytes) warn; they are never written
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=length, offset=offset)
    return raw.view(dtype).as_strided(ph.shape, ph.stride, ph.storage_offset)


MAX_EXPANDED = 20_000_000  # values after expanding shared references (a DAG can double per level)


def _children(node: Any) -> tuple[Any, ...] | None:
    if isinstance(node, dict):
        return (*node.keys(), *node.values())
    if isinstance(node, (list, tuple, set, frozenset)):
        return tuple(node)
    if isinstance(node, ObjectPlaceholder):
        return (*node.args, node.state, *node.items)
    return None


_CONTAINERS = (dict, list, tuple, set, frozenset, ObjectPlaceholder)  # what has _children


def expanded_size(root: Any, limit: int) -> int:
    """How many values ``root`` has once shared references are expanded (as a recursive walk
    of the tree would visit them), counted in time linear in the distinct nodes; stops
    counting past ``limit``."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    # (node, None) to visit; (node, (children, inner)) once its inner children are counted
    stack: list[tuple[Any, Any]] = [(root, None)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done is None:
            kids = _children(node)
            if kids is None or key in sizes or key in active:
                continue
            active.add(key)
            inner = [k for k in kids if isinstance(k, _CONTAINERS)]  # leaves count 1 each
            stack.append((node, (len(kids), inner)))
            stack.extend((k, None) for k in inner)
            continue
        active.discard(key)
        count, inner = done
        sizes[key] = min(limit + 1, 1 + count + sum(sizes.get(id(k), 1) - 1 for k in inner))
    return sizes.get(id(root), 1)


def _shown(leaf: Any) -> Any:
    """A leaf's JSON value; an int too long for ``str()`` (> 4300 digits) is summarised."""
    if type(leaf) is int and leaf.bit_length() > 14_000:
        return f"<int of {leaf.bit_length()} bits>"
    return to_json(leaf)


class PickledReader(CheckpointReader):
    """Entries, tree and globals for a reader whose structure comes from one walked pickle."""

    _little: bool  # the storages are little-endian; set by each reader from the file

    _walk_result: WalkResult
    torch_mmap = True  # whether the torch.load fallback may map the file

    def _init_tree(self, walk: WalkResult) -> None:
        flat = _flat_tensors(walk.tree)
        size = 1 + 2 * len(walk.tree) if flat else expanded_size(walk.tree, MAX_EXPANDED)
        if size > MAX_EXPANDED:
            raise CorruptCheckpointError(
                f"{self.path}: shared references in the pickle expand to more than "
                f"{MAX_EXPANDED} values; a checkpoint never needs that, the file is hostile")
        self._walk_result = walk
        if flat:
            self._tree, leaves = flat
        else:
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(limit, 10_000))  # 600-deep dicts are legitimate
            try:
                self._tree, leaves = flatten_tree(walk.tree)
            finally:
                sys.setrecursionlimit(limit)
        self._tensors: dict[str, TensorPlaceholder] = {}
        entries: list[Entry] = []
        location, itemsize, prod = self._location, ITEMSIZE.get, math.prod
        for key, leaf in leaves:
            if type(leaf) is TensorPlaceholder:
                self._tensors[key] = leaf
                dtype = leaf.dtype  # nbytes as ``leaf.nbytes`` has it, without two properties
                stored = prod(leaf.shape) * itemsize(dtype, 1) if leaf.layout != "meta" else 0
                entries.append(tensor_entry(key, dtype, leaf.shape, stored, location(leaf),
                                            leaf.device))
            else:
                entries.append(ObjectEntry(key, type_name(leaf), _shown(leaf)))
        self._entries = tuple(entries)
        self._full: Any = None
        self._check_views()

    def _check_views(self) -> None:
        """Refuse what ``torch.load`` refuses: negative sizes, strides or offsets, and views
        that reach past their storage (``setStorage ... out of bounds``)."""
        storages, itemsize = self._walk_result.storages, ITEMSIZE.get
        spans: dict[tuple[Any, Any], int] = {}  # (shape, stride) -> elements reached, -1: negative
        for key, ph in self._tensors.items():
            form = (ph.shape, ph.stride)  # 20,000 tensors share a few forms
            span = spans.get(form)
            if span is None:
                span = spans[form] = _span(*form)
            offset = ph.storage_offset
            if span < 0 or offset < 0:
                raise CorruptCheckpointError(
                    f"{self.path}: tensor {key} has a negative size, stride or offset; "
                    "torch.load refuses it, the file is damaged")
            info = storages.get(ph.storage_key) if ph.storage_key is not None else None
            if info is None:
                continue
            need = (offset + span) * itemsize(ph.dtype, 1) if span else 0
            if need > info.nbytes:
                raise CorruptCheckpointError(
                    f"{self.path}: tensor {key} reaches byte {need} of a {info.nbytes}-byte "
                    "storage; torch.load refuses it, the file is damaged")

    def _close_map(self) -> None:
        """Close the file map that loaded tensors view, if any."""
        if getattr(self, "_map", None) is not None:
            try:
                getattr(self._map, "close", lambda: None)()  # a URL's bytes are a bytearray
            except BufferError:
                pass  # tensors still view the map; it closes when they are freed
            self._map = None

    def _direct(self, ph: TensorPlaceholder) -> bool:
        """Whether the tensor's bytes can be used as stored (a plain little-endian storage)."""
        return ph.layout == "strided" and ph.storage_key is not None and self._little

    @abstractmethod
    def _location(self, ph: TensorPlaceholder) -> str:
        """Where the placeholder's bytes live, for ``TensorEntry.location``."""

    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def tree(self) -> Any:
        return self._tree

    def pickle_globals(self) -> tuple[GlobalRef, ...]:
        return self._walk_result.globals

    def placeholder(self, key: str) -> TensorPlaceholder:
        """The pickle's record of the tensor under ``key``.

        Raises:
            KeyError: no tensor has that key.
        """
        return self._tensors[key]

    def _check_span(self, ph: TensorPlaceholder, have: int, where: str) -> None:
        need = (ph.storage_offset + ph.span) * ITEMSIZE.get(ph.dtype, 1)
        if need > have:
            raise CorruptCheckpointError(
                f"{self.path}: record {where} holds {have} bytes but a tensor needs {need}; "
                "the file is truncated or damaged")

    def _load_full(self, key: str) -> torch.Tensor:
        """Fallback for tensors the direct path cannot build: unpickle with torch, once."""
        import torch

        if self._full is None:
            with warnings.catch_warnings():
                # NOTE(torch>=2.0): torch.load warns about its own TypedStorage use
                warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
                self._full = self._torch_load(torch)
        value = get_path(self._full, key)
        if not isinstance(value, torch.Tensor):
            raise KeyError(key)
        return value

    def _torch_load(self, torch: Any) -> Any:
        source: Any = fileio.local_path(self.path)
        mmap = self.torch_mmap and source is not None
        if source is None:  # a URL: torch reads the file object by ranges, no map
            source = fileio.open_binary(self.path)
        if self.trust:
            return torch.load(source, map_location="cpu", weights_only=False, mmap=mmap)
        try:
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            names = ", ".join(dict.fromkeys(g.qualname for g in self.pickle_globals()
                                            if not is_torch_default(g.module, g.name)))
            raise UnsafeCheckpointError(
                f"{os.path.basename(self.path)}: pickle needs non-tensor globals ({names or '?'}); "
                "rerun with --trust if you trust the file") from e
