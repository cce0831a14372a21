"""Comparing two checkpoints' object graphs node by node, naming the paths that differ.

Both sides are encoded trees (``ckpttools.formats.manifest``) plus the layout of each tensor
they name, as the restricted reader sees them: container types, key order and key types, the
attributes torch.load restores (``_metadata``), scalars, numpy values, and for tensors the
dtype, shape, stride, storage offset, ``requires_grad``, ``nn.Parameter`` and which tensors
share a storage. ``convert`` verifies with the full comparison (``structure_only=False``);
``diff A B`` compares structure only (types, key order, attributes), since it compares keys,
values and tensors itself. Tensor bytes are compared by the callers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ckpttools.entries import TensorRef
from ckpttools.formats.base import CheckpointReader
from ckpttools.formats.manifest import Manifest, Node, TensorLayout
from ckpttools.formats.manifest_tree import TreeEncoder

_TYPE_NAMES = {"odict": "OrderedDict", "none": "None", "npscalar": "numpy scalar",
               "ndarray": "numpy array", "size": "torch.Size", "dtype": "torch.dtype",
               "device": "torch.device"}
_LAYOUT_FIELDS = ("dtype", "shape", "stride", "offset", "requires_grad", "parameter")


def describe(node: Node) -> str:
    """A short text for a node in a message (the value of a scalar, else its type)."""
    t = node["t"]
    if t in ("int", "bool", "str"):
        return repr(node["v"])
    if t in ("float", "device", "dtype"):
        return str(node["v"])
    if t in ("list", "tuple", "set", "dict", "odict"):
        return f"{_TYPE_NAMES.get(t, t)} of {len(node['v'])}"
    return _TYPE_NAMES.get(t, t)


def key_text(node: Node) -> str:
    """A dict key as written in a path (``'1'``, ``0``)."""
    return repr(node.get("v")) if node["t"] in ("str", "int", "bool") else describe(node)


def _child(path: str, key: Node, in_attribute: bool) -> str:
    """``model.fc.weight`` for keys of the checkpoint (ckpttools' dotted keys), ``['1']`` for
    keys inside an attribute, where a dotted key would read as another attribute."""
    if not in_attribute and key["t"] in ("str", "int"):
        return f"{path}.{key['v']}" if path else str(key["v"])
    return f"{path}[{key_text(key)}]"


@dataclass
class GraphComparison:
    """One node-by-node walk over an expected (source) and an actual (output) tree."""

    expected_layouts: dict[str, TensorLayout]
    actual_layouts: dict[str, TensorLayout]
    sides: tuple[str, str] = ("in the source", "in the output")
    structure_only: bool = False  # leaves and key sets are compared elsewhere (diff A B)
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (path, source, output)
    _storages: dict[str, str] = field(default_factory=dict)
    _back: dict[str, str] = field(default_factory=dict)

    def first_difference(self, a: Node, b: Node, path: str = "",
                         in_attribute: bool = False) -> str | None:
        """The first difference as ``"<path>: <what>"``, or None when the trees are equal.

        Tensors met on the way are recorded in ``pairs`` (path, source name, output name).
        """
        where = path or "<root>"
        if a["t"] != b["t"]:
            return self._says(where, _TYPE_NAMES.get(a["t"], a["t"]),
                              _TYPE_NAMES.get(b["t"], b["t"]))
        t = a["t"]
        if t in ("dict", "odict"):
            return self._mapping(a, b, path, in_attribute)
        if t in ("list", "tuple", "set"):
            if len(a["v"]) != len(b["v"]):
                return None if self.structure_only and t != "set" else \
                    self._says(where, describe(a), describe(b))
            for i, (x, y) in enumerate(zip(a["v"], b["v"])):
                found = self.first_difference(x, y, _child(path, {"t": "int", "v": i},
                                                            in_attribute), in_attribute)
                if found:
                    return found
            return None
        if self.structure_only and not in_attribute:
            return None
        if t == "tensor":
            return self._tensor(a["v"], b["v"], where)
        if _canonical(a) != _canonical(b):
            return self._says(where, describe(a), describe(b))
        return None

    def _says(self, where: str, a: str, b: str) -> str:
        return f"{where}: {a} {self.sides[0]}, {b} {self.sides[1]}"

    def _mapping(self, a: Node, b: Node, path: str, in_attribute: bool) -> str | None:
        where = path or "<root>"
        keys_a = [_canonical(k) for k, _ in a["v"]]
        keys_b = [_canonical(k) for k, _ in b["v"]]
        if keys_a != keys_b and not (self.structure_only and not in_attribute
                                     and set(keys_a) != set(keys_b)):
            return f"{where}: {_key_problem(a['v'], b['v'], keys_a, keys_b, self.sides)}"
        other = {ka: y for ka, (_, y) in zip(keys_b, b["v"])}
        for ka, (k, x) in zip(keys_a, a["v"]):
            if ka not in other:
                continue  # only when key sets differ in a structure-only comparison
            found = self.first_difference(x, other[ka], _child(path, k, in_attribute),
                                          in_attribute)
            if found:
                return found
        attrs_a, attrs_b = a.get("a", []), b.get("a", [])
        if [n for n, _ in attrs_a] != [n for n, _ in attrs_b]:
            return self._says(where, f"attributes {[n for n, _ in attrs_a]}",
                              f"attributes {[n for n, _ in attrs_b]}")
        for (name, x), (_, y) in zip(attrs_a, attrs_b):
            found = self.first_difference(x, y, f"{path}.{name}" if path else name, True)
            if found:
                return found
        return None

    def _tensor(self, name_a: str, name_b: str, where: str) -> str | None:
        self.pairs.append((where, name_a, name_b))
        la, lb = self.expected_layouts.get(name_a), self.actual_layouts.get(name_b)
        if la is None or lb is None:
            return f"{where}: tensor {name_a if la is None else name_b} has no recorded layout"
        for attr in _LAYOUT_FIELDS:
            if getattr(la, attr) != getattr(lb, attr):
                return self._says(where, f"tensor {attr} {getattr(la, attr)}",
                                  str(getattr(lb, attr)))
        # storage sharing: source storages and output storages must pair one to one
        if self._storages.setdefault(la.storage, lb.storage) != lb.storage or \
                self._back.setdefault(lb.storage, la.storage) != la.storage:
            return f"{where}: tensor storage sharing differs"
        return None


def _canonical(node: Node) -> str:
    return json.dumps(node, sort_keys=True)


def _key_problem(pa: list[Any], pb: list[Any], ka: list[str], kb: list[str],
                 sides: tuple[str, str]) -> str:
    missing = [p[0] for p, k in zip(pa, ka) if k not in set(kb)]
    extra = [p[0] for p, k in zip(pb, kb) if k not in set(ka)]
    if missing:
        return f"key {key_text(missing[0])} {sides[0]} only"
    if extra:
        return f"key {key_text(extra[0])} {sides[1]} only"
    first = next(i for i, (x, y) in enumerate(zip(ka, kb)) if x != y)
    return (f"key order differs at position {first}: {key_text(pa[first][0])} {sides[0]}, "
            f"{key_text(pb[first][0])} {sides[1]}")


Graph = tuple[Node, dict[str, TensorLayout]]


def encode_tree(tree: Any) -> tuple[Node, list[str]]:
    """Encode a reader's tree; tensors are named by their reader keys, listed in order."""
    keys: list[str] = []

    def name_of(value: Any, path: str) -> str | None:
        if isinstance(value, TensorRef):
            keys.append(value.key)
            return value.key
        return None

    return TreeEncoder(name_of).encode(tree) or {"t": "none"}, keys


def pickled_graph(reader: Any) -> Graph:
    """The graph of a torch pickle as the restricted reader walked it (storages by record)."""
    root, keys = encode_tree(reader.tree())
    layouts = {}
    for key in keys:
        ph = reader.placeholder(key)
        layouts[key] = TensorLayout(ph.dtype, tuple(ph.shape), tuple(ph.stride),
                                    str(ph.storage_key), ph.storage_offset, 0,
                                    ph.requires_grad, ph.parameter)
    return root, layouts


def manifest_graph(reader: CheckpointReader) -> Graph | None:
    """The graph a ckpttools manifest stored in the checkpoint records, if there is one."""
    text = reader.manifest()
    if text is None:
        return None
    manifest = Manifest.from_json(text, reader.path)
    return manifest.root, manifest.tensors


def reader_graph(reader: CheckpointReader) -> Graph | None:
    """The object graph of a checkpoint, or None when its format keeps no structure (plain
    safetensors or DCP: named tensors only).

    Raises:
        UnrepresentableError: the tree holds a value the manifest cannot encode.
    """
    if callable(getattr(reader, "placeholder", None)):
        return pickled_graph(reader)
    return manifest_graph(reader)
