"""Encoding a checkpoint tree as a manifest ``root`` node and decoding it back.

The node types are described in ``ckpttools.formats.manifest``. Encoding keeps what
``torch.load(weights_only=True)`` would restore: container types (dict, OrderedDict, list,
tuple, set), key order and key types, the instance attributes of an OrderedDict (``_metadata``).
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ckpttools.entries import Entry, ObjectEntry, ObjectPlaceholder, TensorEntry, TensorRef
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.manifest import MANIFEST_KEY, Manifest, Node, UnrepresentableError
from ckpttools.keypaths import iter_leaves
from ckpttools.units import with_article


def _is_numpy(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "numpy"


def _numpy_node(value: Any, path: str) -> Node:
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.kind not in "OV":
        data = np.ascontiguousarray(value).tobytes()
        return {"t": "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "v": base64.b64encode(data).decode()}
    if isinstance(value, np.generic) and value.dtype.kind not in "OV":
        return {"t": "npscalar", "dtype": value.dtype.str,
                "v": base64.b64encode(value.tobytes()).decode()}
    raise UnrepresentableError(f"{path or '<root>'}: numpy value of type {type(value).__name__} "
                               "cannot be stored; pass --drop-unrepresentable to leave it out")


def _np_dtype(ph: Any) -> str | None:
    """numpy ``dtype.str`` of a recorded ``numpy.dtype('f4', ...)`` placeholder."""
    if not isinstance(ph, ObjectPlaceholder) or ph.class_name != "numpy.dtype" or not ph.args:
        return None
    code = str(ph.args[0])
    order = ph.state[1] if isinstance(ph.state, tuple) and len(ph.state) > 1 else "|"
    order = "<" if order == "=" else order
    return (order if code[0] not in "bB?" and order in "<>|" else "|") + code


def placeholder_node(ph: ObjectPlaceholder, path: str) -> Node:
    """Encode a numpy array or scalar a restricted reader recorded without executing numpy.

    Raises:
        UnrepresentableError: any other class.
    """
    if ph.class_name.endswith("multiarray._reconstruct") and isinstance(ph.state, tuple) \
            and len(ph.state) == 5 and ph.state[3] is False and isinstance(ph.state[4], bytes):
        dtype = _np_dtype(ph.state[2])
        if dtype is not None:
            return {"t": "ndarray", "dtype": dtype, "shape": [int(d) for d in ph.state[1]],
                    "v": base64.b64encode(ph.state[4]).decode()}
    if ph.class_name.endswith("multiarray.scalar") and len(ph.args) == 2 \
            and isinstance(ph.args[1], bytes):
        dtype = _np_dtype(ph.args[0])
        if dtype is not None:
            return {"t": "npscalar", "dtype": dtype, "v": base64.b64encode(ph.args[1]).decode()}
    raise UnrepresentableError(f"{path or '<root>'}: {with_article(ph.class_name)} cannot be stored without "
                               "pickle; pass --drop-unrepresentable to leave it out")


def _scalar_node(value: Any) -> Node | None:
    if value is None:
        return {"t": "none"}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int) and type(value) is int:
        return {"t": "int", "v": value}
    if type(value) is float:
        return {"t": "float", "v": repr(value)}
    if type(value) is complex:
        return {"t": "complex", "v": [repr(value.real), repr(value.imag)]}
    if type(value) is str:
        return {"t": "str", "v": value}
    if type(value) in (bytes, bytearray):
        return {"t": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    return None


def _torch_node(value: Any) -> Node | None:
    if type(value).__module__ != "torch":
        return None
    name = type(value).__name__
    if name == "dtype":
        return {"t": "dtype", "v": str(value).removeprefix("torch.")}
    if name == "device":
        return {"t": "device", "v": str(value)}
    if name == "Size":
        return {"t": "size", "v": [int(d) for d in value]}
    return None


TensorNamer = Callable[[Any, str], "str | None"]


@dataclass
class TreeEncoder:
    """Encodes a checkpoint tree (real objects, or a reader's tree with ``TensorRef`` leaves).

    Args:
        tensor_name: returns the stored tensor name for a tensor leaf at a dotted path, or
            None when the value is not a tensor.
        drop: leave out values that cannot be represented instead of raising.
    """

    tensor_name: TensorNamer
    drop: bool = False
    dropped: list[str] = field(default_factory=list)

    def encode(self, value: Any, path: str = "") -> Node | None:
        """Encode ``value``; None when it was dropped.

        Raises:
            UnrepresentableError: a value has no encoding and ``drop`` is false.
        """
        name = self.tensor_name(value, path)
        if name is not None:
            return {"t": "tensor", "v": name}
        node = _scalar_node(value) or _torch_node(value)
        if node is not None:
            return node
        if isinstance(value, dict):
            return self._mapping(value, path)
        if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
            items = [self.encode(v, _join(path, str(i))) or {"t": "none"}
                     for i, v in enumerate(value)]
            return {"t": type(value).__name__, "v": items}
        if type(value) is set:
            return self._set(value, path)
        try:
            if _is_numpy(value):
                return _numpy_node(value, path)
            if isinstance(value, ObjectPlaceholder):
                return placeholder_node(value, path)
            if type(value).__name__ == "TorchDtype":  # a reader's stand-in for torch.<dtype>
                return {"t": "dtype", "v": str(getattr(value, "name"))}
            raise UnrepresentableError(
                f"{path or '<root>'}: {with_article(_type_name(value))} cannot be stored without pickle; "
                "pass --drop-unrepresentable to leave it out")
        except UnrepresentableError:
            if not self.drop:
                raise
            self.dropped.append(path or "<root>")
            return None

    def _mapping(self, value: dict[Any, Any], path: str) -> Node:
        if type(value) not in (dict, OrderedDict):
            if not self.drop:
                raise UnrepresentableError(f"{path or '<root>'}: {with_article(_type_name(value))} cannot be "
                                           "stored; pass --drop-unrepresentable to leave it out")
        pairs = []
        for k, v in value.items():
            key_node = _key_node(k)
            if key_node is None:
                if not self.drop:
                    raise UnrepresentableError(
                        f"{_join(path, str(k))}: a dict key of type {type(k).__name__} cannot be "
                        "stored; pass --drop-unrepresentable to leave the entry out")
                self.dropped.append(_join(path, str(k)))
                continue
            child = self.encode(v, _join(path, str(k)))
            if child is not None:
                pairs.append([key_node, child])
        node: Node = {"t": "odict" if type(value) is OrderedDict else "dict", "v": pairs}
        attrs = vars(value) if type(value) is OrderedDict else {}
        if attrs:
            node["a"] = self._attributes(attrs, path)
        return node

    def _attributes(self, attrs: dict[Any, Any], path: str) -> list[list[Any]]:
        out: list[list[Any]] = []
        for name, v in attrs.items():
            if type(name) is not str:
                raise UnrepresentableError(f"{path or '<root>'}: an attribute named by a "
                                           f"{type(name).__name__} cannot be stored")
            child = self.encode(v, f"{path}.{name}" if path else name)
            if child is not None:
                out.append([name, child])
        return out

    def _set(self, value: set[Any], path: str) -> Node:
        items = []
        for v in value:
            node = _scalar_node(v) or _torch_node(v)
            if node is None:
                raise UnrepresentableError(f"{path or '<root>'}: a set element of type "
                                           f"{type(v).__name__} cannot be stored")
            items.append(node)
        # a set has no order: sort by the JSON text so equal sets encode equally
        return {"t": "set", "v": sorted(items, key=lambda n: json.dumps(n, sort_keys=True))}


def _key_node(key: Any) -> Node | None:
    """A dict key's node: a scalar, a torch dtype/device/size, or a tuple of those
    (``{(epoch, step): loss}``); None for anything else."""
    if type(key) is tuple:
        items = [_key_node(k) for k in key]
        return None if any(i is None for i in items) else {"t": "tuple", "v": items}
    return _scalar_node(key) or _torch_node(key)


def _type_name(value: Any) -> str:
    if isinstance(value, ObjectPlaceholder):
        return value.class_name
    if type(value).__name__ == "TensorPlaceholder":  # a tensor pickled inside a value's bytes
        return "tensor pickled inside a value (not one of the checkpoint's tensors)"
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(t: str, pairs: list[tuple[Any, Any]], attrs: list[tuple[str, Any]]) -> Any:
    if t == "dict":
        return dict(pairs)
    out: OrderedDict[Any, Any] = OrderedDict(pairs)
    out.__dict__.update(attrs)  # as torch's weights_only unpickler applies BUILD state
    return out


def decode_tree(node: Node, tensor: Callable[[str], Any]) -> Any:
    """Rebuild the Python object an encoded tree stands for.

    Args:
        node: the encoded tree (``Manifest.root``).
        tensor: returns the value for a tensor leaf, given its stored name.

    Raises:
        CorruptCheckpointError: an unknown node type.
    """
    t = node["t"]
    simple = _DECODERS.get(t)
    if simple is not None:
        return simple(node)
    if t == "tensor":
        return tensor(node["v"])
    if t in ("list", "tuple"):
        items = [decode_tree(child, tensor) for child in node["v"]]
        return items if t == "list" else tuple(items)
    if t == "set":
        return {decode_tree(child, tensor) for child in node["v"]}
    if t in ("dict", "odict"):
        pairs = [(decode_tree(k, tensor), decode_tree(v, tensor)) for k, v in node["v"]]
        return _mapping(t, pairs, [(n, decode_tree(v, tensor)) for n, v in node.get("a", ())])
    if t in ("ndarray", "npscalar"):
        import numpy as np

        arr = np.frombuffer(base64.b64decode(node["v"]), dtype=np.dtype(node["dtype"]))
        return arr.reshape(node["shape"]).copy() if t == "ndarray" else arr[0]
    raise CorruptCheckpointError(f"{MANIFEST_KEY}: unknown node type {t!r}")


def manifest_view(text: str, where: str,
                  tensors: Iterable[TensorEntry]) -> tuple[Any, tuple[Entry, ...]]:
    """The tree and entries of the checkpoint a ckpttools-written file stands for.

    Readers of safetensors and DCP output use it so that every command sees a converted
    training checkpoint as the original: nested, with its epoch, loss and hyperparameters.
    Nothing is imported: tensors become ``TensorRef``, numpy values placeholders.

    Args:
        text: the stored manifest JSON.
        where: the file, for error messages.
        tensors: the file's tensor entries, named as stored.

    Raises:
        CorruptCheckpointError: the manifest is unreadable or names a tensor the file lacks.
    """
    from ckpttools.formats.pickle.stand_ins import type_name
    from ckpttools.formats.pickle.stand_ins import to_json

    manifest = Manifest.from_json(text, where)
    by_name = {t.key: t for t in tensors}
    tree = _metadata_tree(manifest.root)
    entries: list[Entry] = []
    for key, leaf in iter_leaves(tree):
        if isinstance(leaf, TensorRef):
            if leaf.key not in by_name:
                raise CorruptCheckpointError(f"{where}: {MANIFEST_KEY} names tensor {leaf.key!r} "
                                             "the file lacks; the file was changed after writing")
            entries.append(by_name[leaf.key])
        else:
            entries.append(ObjectEntry(key, type_name(leaf), to_json(leaf)))
    return tree, tuple(entries)


def _metadata_tree(node: Node) -> Any:
    """``decode_tree`` without torch or numpy: placeholders for what would need them."""
    from ckpttools.formats.pickle.stand_ins import TorchDtype

    t = node["t"]
    if t == "tensor":
        return TensorRef(node["v"])
    if t in ("list", "tuple"):
        items = [_metadata_tree(child) for child in node["v"]]
        return items if t == "list" else tuple(items)
    if t in ("dict", "odict"):
        pairs = [(_metadata_tree(k), _metadata_tree(v)) for k, v in node["v"]]
        return _mapping(t, pairs, [(n, _metadata_tree(v)) for n, v in node.get("a", ())])
    if t in ("ndarray", "npscalar"):
        name = "numpy.ndarray" if t == "ndarray" else "numpy.generic"
        return ObjectPlaceholder(name, state={"dtype": node["dtype"], "shape": node.get("shape", [])})
    if t == "dtype":
        return TorchDtype(node["v"])
    if t in ("device", "size"):
        return node["v"] if t == "device" else tuple(node["v"])
    return decode_tree(node, TensorRef)


def _torch_attr(kind: str, value: Any) -> Any:
    import torch

    if kind == "dtype":
        return getattr(torch, value)
    if kind == "device":
        return torch.device(value)
    return torch.Size(value)


_DECODERS: dict[str, Callable[[Node], Any]] = {
    "none": lambda n: None,
    "bool": lambda n: bool(n["v"]),
    "int": lambda n: int(n["v"]),
    "float": lambda n: float(n["v"]),
    "complex": lambda n: complex(float(n["v"][0]), float(n["v"][1])),
    "str": lambda n: str(n["v"]),
    "bytes": lambda n: base64.b64decode(n["v"]),
    "dtype": lambda n: _torch_attr("dtype", n["v"]),
    "device": lambda n: _torch_attr("device", n["v"]),
    "size": lambda n: _torch_attr("size", n["v"]),
}
