"""The manifest: a checkpoint's non-tensor structure, stored as JSON next to its tensors.

safetensors holds only named tensors and a ``str -> str`` metadata map. To convert a full
training checkpoint losslessly, ckpttools stores everything else in ``__metadata__`` under the
key ``"ckpttools.manifest"`` (DCP output keeps the same JSON as a bytes entry of that name).
The JSON document is::

    {"format": "ckpttools.manifest", "version": 1,
     "root": NODE,
     "tensors": {NAME: {"dtype": "float32", "shape": [2, 3], "stride": [3, 1],
                        "storage": "0", "offset": 0, "storage_nbytes": 24}}}

``root`` is a typed tree; every NODE is an object with a type tag ``"t"``:

============  ==========================================================================
``t``         value
============  ==========================================================================
none          Python ``None``
bool, int     ``"v"``: the JSON value (ints of any size)
float         ``"v"``: ``repr(x)`` as a string, so nan, inf and every bit survive
complex       ``"v"``: ``[repr(real), repr(imag)]``
str           ``"v"``: the string
bytes         ``"v"``: base64
list, tuple   ``"v"``: list of NODEs
dict, odict   ``"v"``: list of ``[KEY_NODE, VALUE_NODE]`` pairs in order; keys keep their type
              (int ``0`` and str ``"0"`` differ), ``odict`` is ``collections.OrderedDict``
tensor        ``"v"``: the name of the tensor in the file (a key of ``"tensors"``)
ndarray       ``"dtype"`` (numpy ``dtype.str``, e.g. ``"<u4"``), ``"shape"``, ``"v"``: base64 of
              the C-order bytes
npscalar      ``"dtype"``, ``"v"``: base64 of the scalar's bytes
dtype         ``"v"``: torch dtype name (``"bfloat16"``)
device        ``"v"``: ``"cpu"``, ``"cuda:0"``
size          ``"v"``: ``torch.Size`` as a list of ints
============  ==========================================================================

``"tensors"`` records how each tensor viewed its storage when saved: tensors with the same
``"storage"`` id shared one storage (tied weights, views), ``"offset"`` is the storage offset
in elements and ``"stride"`` the strides. In the file every tensor is stored contiguously
under its own name; a ``.pth`` written back from the manifest restores the sharing. Bytes of
a storage that no saved tensor views are not kept (they read back as zeros).
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ckpttools.entries import Entry, ObjectEntry, ObjectPlaceholder, TensorEntry, TensorRef
from ckpttools.errors import CkptError, CorruptCheckpointError, UnsupportedError
from ckpttools.keypaths import iter_leaves
from ckpttools.units import with_article

# the safetensors ``__metadata__`` key (or DCP bytes entry) holding a converted checkpoint's structure
MANIFEST_KEY = "ckpttools.manifest"
MANIFEST_FORMAT = "ckpttools.manifest"
MANIFEST_VERSION = 1

Node = dict[str, Any]


class UnrepresentableError(CkptError):
    """A value in the checkpoint has no encoding in the manifest (an arbitrary object)."""


@dataclass(frozen=True)
class TensorLayout:
    """How one saved tensor viewed its storage."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage: str
    offset: int
    storage_nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "stride": list(self.stride),
                "storage": self.storage, "offset": self.offset,
                "storage_nbytes": self.storage_nbytes}

    @property
    def is_whole_storage(self) -> bool:
        """True when the tensor is contiguous and covers its storage exactly."""
        numel = 1
        for d in self.shape:
            numel *= d
        return (self.offset == 0 and self.stride == contiguous_stride(self.shape)
                and numel * dtype_size(self.dtype) == self.storage_nbytes)


@dataclass(frozen=True)
class Manifest:
    """The structure of a checkpoint: a typed tree plus the layout of each tensor."""

    root: Node
    tensors: dict[str, TensorLayout] = field(default_factory=dict)

    def to_json(self) -> str:
        """The JSON text stored in the file (compact, key order kept)."""
        doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "root": self.root,
               "tensors": {k: v.to_dict() for k, v in self.tensors.items()}}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        """Parse the stored JSON.

        Raises:
            CorruptCheckpointError: the text is not a manifest this version can read.
        """
        try:
            doc = json.loads(text)
            if doc.get("format") != MANIFEST_FORMAT or int(doc["version"]) > MANIFEST_VERSION:
                raise ValueError("not a ckpttools manifest of a known version")
            tensors = {k: TensorLayout(v["dtype"], tuple(v["shape"]), tuple(v["stride"]),
                                       str(v["storage"]), int(v["offset"]),
                                       int(v["storage_nbytes"]))
                       for k, v in doc["tensors"].items()}
            return cls(doc["root"], tensors)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptCheckpointError(f"{where}: bad {MANIFEST_KEY}: {e}; "
                                         "the file was changed after ckpttools wrote it") from e

    def tensor_names(self) -> list[str]:
        """Tensor names in the order the tree references them."""
        return [n["v"] for n in iter_nodes(self.root) if n["t"] == "tensor"]


_DTYPE_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1,
    "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2,
    "uint8": 1, "bool": 1, "complex128": 16, "complex64": 8, "complex32": 4,
}


def dtype_size(dtype: str) -> int:
    """Bytes per element of a torch dtype name.

    Raises:
        UnsupportedError-like CkptError: the dtype is unknown.
    """
    try:
        return _DTYPE_SIZES[dtype]
    except KeyError as e:
        raise UnsupportedError(f"dtype {dtype}: not supported by ckpttools convert") from e


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a C-contiguous tensor of ``shape``."""
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))


def iter_nodes(node: Node) -> Any:
    """Every node of an encoded tree, depth first."""
    yield node
    t = node["t"]
    if t in ("list", "tuple"):
        for child in node["v"]:
            yield from iter_nodes(child)
    elif t in ("dict", "odict"):
        for k, v in node["v"]:
            yield from iter_nodes(k)
            yield from iter_nodes(v)


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
            key_node = _scalar_node(k) or _torch_node(k)
            if key_node is None:
                raise UnrepresentableError(f"{path or '<root>'}: dict key of type "
                                           f"{type(k).__name__} cannot be stored")
            child = self.encode(v, _join(path, str(k)))
            if child is not None:
                pairs.append([key_node, child])
        return {"t": "odict" if type(value) is OrderedDict else "dict", "v": pairs}


def _type_name(value: Any) -> str:
    if isinstance(value, ObjectPlaceholder):
        return value.class_name
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


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
    if t in ("dict", "odict"):
        pairs = [(decode_tree(k, tensor), decode_tree(v, tensor)) for k, v in node["v"]]
        return dict(pairs) if t == "dict" else OrderedDict(pairs)
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
        return {_metadata_tree(k): _metadata_tree(v) for k, v in node["v"]}
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
