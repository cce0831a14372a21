"""The manifest: a checkpoint's non-tensor structure, stored as JSON next to its tensors.

safetensors holds only named tensors and a ``str -> str`` metadata map. To convert a full
training checkpoint losslessly, ckpttools stores everything else in ``__metadata__`` under the
key ``"ckpttools.manifest"`` (DCP output keeps the same JSON as a bytes entry of that name).
The JSON document (version 2) is::

    {"format": "ckpttools.manifest", "version": 2,
     "root": NODE,
     "tensors": {NAME: {"dtype": "float32", "shape": [2, 3], "stride": [3, 1],
                        "storage": "0", "offset": 0, "storage_nbytes": 24,
                        "requires_grad": true, "parameter": true}}}

``requires_grad`` and ``parameter`` (an ``nn.Parameter``) appear only when true. ``root`` is a
typed tree; every NODE is an object with a type tag ``"t"``:

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
set           ``"v"``: list of NODEs, sorted by their JSON text (version 2)
dict, odict   ``"v"``: list of ``[KEY_NODE, VALUE_NODE]`` pairs in order; keys keep their type
              (int ``0`` and str ``"0"`` differ), ``odict`` is ``collections.OrderedDict``;
              ``"a"`` (version 2, optional): ``[[NAME, VALUE_NODE], ...]``, the instance
              attributes torch.load restores on an OrderedDict (a ``state_dict()``'s
              ``_metadata``)
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

Version 1 (ckpttools before #13) had no ``set`` nodes, no ``"a"`` attributes and no tensor
flags; it reads unchanged as version 2 without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ckpttools.errors import CkptError, CorruptCheckpointError, UnsupportedError

# the safetensors ``__metadata__`` key (or DCP bytes entry) holding a converted checkpoint's structure
MANIFEST_KEY = "ckpttools.manifest"
MANIFEST_FORMAT = "ckpttools.manifest"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)

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
    requires_grad: bool = False
    parameter: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape),
                               "stride": list(self.stride), "storage": self.storage,
                               "offset": self.offset, "storage_nbytes": self.storage_nbytes}
        if self.requires_grad:
            out["requires_grad"] = True
        if self.parameter:
            out["parameter"] = True
        return out

    @classmethod
    def from_dict(cls, v: dict[str, Any]) -> TensorLayout:
        """The layout recorded by ``to_dict`` (flags absent in version 1 read as false)."""
        return cls(str(v["dtype"]), tuple(int(d) for d in v["shape"]),
                   tuple(int(d) for d in v["stride"]), str(v["storage"]), int(v["offset"]),
                   int(v["storage_nbytes"]), v.get("requires_grad") is True,
                   v.get("parameter") is True)

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
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError("not a ckpttools manifest")
            if doc["version"] not in READABLE_VERSIONS:
                raise ValueError(f"manifest version {doc['version']} is newer than this "
                                 f"ckpttools reads (up to {MANIFEST_VERSION}); upgrade ckpttools")
            tensors = {k: TensorLayout.from_dict(v) for k, v in doc["tensors"].items()}
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
        raise UnsupportedError(f"dtype {dtype}: not supported by ckpttools convert (quantized "
                               "tensors have no lossless encoding here); keep the .pth") from e


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
    if t in ("list", "tuple", "set"):
        for child in node["v"]:
            yield from iter_nodes(child)
    elif t in ("dict", "odict"):
        for k, v in node["v"]:
            yield from iter_nodes(k)
            yield from iter_nodes(v)
        for _, v in node.get("a", ()):
            yield from iter_nodes(v)
