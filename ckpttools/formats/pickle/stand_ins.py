"""Stand-ins the restricted pickle reader returns for globals, and the records it produces.

No global named by a pickle is ever imported or called: torch's tensor-rebuild functions map
to functions here that build ``TensorPlaceholder`` records, a few plain builtins map to
themselves, and everything else maps to a recording class (``_Stand``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from ckpttools.entries import GlobalRef, ObjectPlaceholder
# the records live in ``placeholders``; imported here, where every reader has found them
from ckpttools.formats.pickle.placeholders import (DTYPE_ALIASES, ITEMSIZE, STORAGE_DTYPES,
                                                   StorageInfo, TensorPlaceholder, TorchDtype,
                                                   new_placeholder, new_storage_info)
from ckpttools.formats.pickle.safety import classify_global


class _Stand:
    """Records how a pickle used an unknown global: call arguments, state, items."""

    __slots__ = ("args", "state", "items", "pairs")
    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stand:
        self = object.__new__(cls)
        self.args = args + ((kwargs,) if kwargs else ())
        self.state = None
        self.items: list[Any] = []
        self.pairs: list[tuple[Any, Any]] = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.pairs.append((key, value))

    def __call__(self, *args: Any) -> _Stand:
        # a pickle calling what an unknown call returned (getattr(os, "system")("..."))
        return _CALL(self, *args)


class _Call(_Stand):
    __slots__ = ()
    qualname = "<call>"


_CALL = _Call


def _stand_type(qualname: str) -> type[_Stand]:
    return type(qualname.rsplit(".", 1)[-1], (_Stand,), {"__slots__": (), "qualname": qualname})


class _ODict(dict):  # type: ignore[type-arg]
    """defaultdict / ``builtins.dict`` stand-in: a dict that accepts (and drops) BUILD state."""

    def __setstate__(self, state: Any) -> None:
        pass


class _OrderedDictStand(dict):  # type: ignore[type-arg]
    """``collections.OrderedDict`` stand-in that keeps its BUILD state (a ``state_dict()``'s
    ``_metadata``), so ``finalize`` can return the ``OrderedDict`` torch.load would."""

    def __setstate__(self, state: Any) -> None:
        self.build_state = state  # type: ignore[attr-defined]  # instances have a __dict__


def ordered_dict_of(pairs: list[tuple[Any, Any]], state: Any) -> Any:
    """The ``OrderedDict`` ``torch.load(weights_only=True)`` rebuilds: the pairs in order and,
    when the BUILD state is a dict, its entries as instance attributes (torch's unpickler does
    ``inst.__dict__.update(state)`` for an OrderedDict; other state it rejects, so it is dropped).
    """
    out: OrderedDict[Any, Any] = OrderedDict(pairs)
    if isinstance(state, dict):
        out.__dict__.update(state)
    return out


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: str


class _Bad(ValueError):
    pass


_INT = frozenset({int})


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
            dtype: str | None = None, layout: str = "strided") -> TensorPlaceholder:
    # called once per tensor: checks kept to C-level operations
    if type(storage) is not StorageInfo:
        raise _Bad("tensor without a storage")
    if type(offset) is not int or offset < 0:
        raise _Bad("bad tensor storage offset")
    if type(size) is not tuple or type(stride) is not tuple or len(size) != len(stride) or not (
            set(map(type, size + stride)) <= _INT):
        raise _Bad("tensor size or stride is not a tuple of ints")
    return new_placeholder(storage.key, dtype or storage.dtype, offset, size, stride,
                           storage.location, requires_grad is True, layout)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not tuple or not set(map(type, value)) <= _INT:
        raise _Bad(f"tensor {what} is not a tuple of ints")
    return value


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorPlaceholder:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, *_: Any) -> TensorPlaceholder:
    return _tensor(storage, offset, size, stride, requires_grad)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, *_: Any) -> TensorPlaceholder:
    name = dtype.name if isinstance(dtype, TorchDtype) else None
    return _tensor(storage, offset, size, stride, requires_grad, name)


def _rebuild_qtensor(storage: Any, offset: Any, size: Any, stride: Any, qparams: Any,
                     requires_grad: Any = False, *_: Any) -> TensorPlaceholder:
    return _tensor(storage, offset, size, stride, requires_grad, layout="quantized")


def _rebuild_meta(dtype: Any, size: Any, stride: Any, requires_grad: Any = False,
                  *_: Any) -> TensorPlaceholder:
    name = dtype.name if isinstance(dtype, TorchDtype) else "float32"
    return TensorPlaceholder(None, name, 0, _ints(size, "size"), _ints(stride, "stride"),
                             "meta", bool(requires_grad), "meta")


def _rebuild_parameter(data: Any, requires_grad: Any = True, *_: Any) -> Any:
    if isinstance(data, TensorPlaceholder):
        return TensorPlaceholder(data.storage_key, data.dtype, data.storage_offset, data.shape,
                                 data.stride, data.device, requires_grad is True, data.layout,
                                 parameter=True)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if not callable(func) or not isinstance(args, tuple):
        raise _Bad("bad _rebuild_from_type_v2 arguments")
    out = func(*args)  # func is always one of this module's stand-ins
    return with_attributes_flag(out, state)


def with_attributes_flag(value: Any, state: Any) -> Any:
    """Mark a tensor rebuilt with state (Python attributes torch.load sets on it), so that a
    consumer that cannot keep them (``convert``) can refuse instead of dropping them."""
    if type(value) is TensorPlaceholder and state:
        return replace(value, has_attributes=True)
    return value


def _device(kind: Any, index: Any = None) -> str:
    return f"{kind}:{index}" if index is not None else str(kind)


def _size(dims: Any = ()) -> tuple[Any, ...]:
    return tuple(dims)


def _codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> Any:
    # protocol 2 pickles Python 3 bytes as _codecs.encode(latin-1 text, "latin1")
    if isinstance(text, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return text.encode(encoding)
    return _stand_type("_codecs.encode")(text, encoding, *rest)


def _defaultdict(*_: Any) -> _ODict:
    return _ODict()


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    # copyreg._reconstructor: protocol 0/1 instance creation; BUILD fills the fields later
    if isinstance(cls, type) and issubclass(cls, _Stand):
        inst = cls()
        if isinstance(state, dict):  # a dict subclass: state is its contents
            inst.pairs.extend(state.items())
        elif isinstance(state, list):
            inst.items.extend(state)
        return inst
    raise _Bad("bad copyreg._reconstructor arguments")


def _newobj(cls: Any, *args: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, _Stand):
        return cls(*args)
    raise _Bad("bad copyreg.__newobj__ arguments")


def _newobj_ex(cls: Any, args: Any, kwargs: Any) -> Any:
    return _newobj(cls, *tuple(args), kwargs)


def _bounded_bytes(kind: type) -> Any:
    def build(source: Any = b"", *rest: Any) -> Any:
        if isinstance(source, int):
            raise _Bad(f"{kind.__name__} of a size, not of data")  # would allocate unbounded
        return kind(source, *rest)
    return build


_KNOWN: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch._utils._rebuild_meta_tensor_no_storage": _rebuild_meta,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.device": _device,
    "torch.Size": _size,
    "torch.serialization._get_layout": str,
    "collections.OrderedDict": _OrderedDictStand,
    "collections.defaultdict": _defaultdict,
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
    "copyreg.__newobj_ex__": _newobj_ex,
    "_codecs.encode": _codecs_encode,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.list": list,
    "builtins.tuple": tuple, "builtins.dict": _ODict, "builtins.complex": complex,
    "builtins.slice": slice, "builtins.int": int, "builtins.float": float,
    "builtins.str": str, "builtins.bool": bool,
    "builtins.bytes": _bounded_bytes(bytes), "builtins.bytearray": _bounded_bytes(bytearray),
}


class WalkContext:
    """Per-walk state: the globals seen and the storages named by persistent ids."""

    def __init__(self, pickle_name: str) -> None:
        self.pickle_name = pickle_name
        self.globals: dict[tuple[str, str], GlobalRef] = {}
        self.storages: dict[str, StorageInfo] = {}

    def resolve_global(self, module: str, name: str) -> Any:
        """Record ``module.name`` and return its stand-in (never the real object)."""
        if (module, name) not in self.globals:
            safety, reason = classify_global(module, name)
            self.globals[(module, name)] = GlobalRef(module, name, safety, self.pickle_name,
                                                     reason)
        qualname = f"{module}.{name}"
        known = _KNOWN.get(qualname)
        if known is not None:
            return known
        if module in ("torch", "torch.storage"):
            if name in STORAGE_DTYPES:
                return _StorageType(STORAGE_DTYPES[name])
            if name in ITEMSIZE or name in DTYPE_ALIASES:
                return TorchDtype(DTYPE_ALIASES.get(name, name))
        return _stand_type(qualname)

    def torch_persistent_load(self, pid: Any) -> Any:
        """torch's ``('storage', storage_type, key, location, numel[, view])`` ids."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            return _stand_type("<persistent id>")(pid)
        _, stype, key, location, numel = pid[:5]
        info = self.storages.get(key)
        if info is not None:
            return info
        if isinstance(stype, _StorageType):
            dtype = stype.dtype
        elif isinstance(stype, TorchDtype):
            dtype = stype.name
        else:
            raise _Bad(f"unknown storage type in persistent id {key!r}")
        if type(numel) is not int or numel < 0:
            raise _Bad(f"bad storage size in persistent id {key!r}")
        info = new_storage_info(str(key), dtype, numel, str(location))
        self.storages[key] = info
        return info


_CYCLE = "<cycle>"
# what ``finalize`` returns as it is; tested inline for a dict's keys and values (20,000 each)
_LEAVES = frozenset({str, int, float, bool, bytes, TensorPlaceholder, type(None)})


def finalize(node: Any, _seen: dict[int, Any] | None = None) -> Any:
    """Turn the unpickler's stand-ins into the public tree types (dicts, tuples, placeholders)."""
    seen: dict[int, Any] = {} if _seen is None else _seen
    kind = type(node)
    if kind in _LEAVES:
        return node
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = _CYCLE
    if isinstance(node, dict):
        leaf = _LEAVES
        pairs = [(k if type(k) in leaf else finalize(k, seen),
                  v if type(v) in leaf else finalize(v, seen)) for k, v in node.items()]
        try:
            out: Any = dict(pairs) if kind is not _OrderedDictStand else ordered_dict_of(
                pairs, finalize(getattr(node, "build_state", None), seen))
        except TypeError:  # keys that are not plain values (DCP's MetadataIndex records)
            out = ObjectPlaceholder("dict", items=tuple(pairs))
    elif kind is list:
        out = [finalize(v, seen) for v in node]
    elif kind is tuple:
        out = tuple(finalize(v, seen) for v in node)
    elif kind in (set, frozenset):
        out = kind(_key(finalize(v, seen)) for v in node)
    elif isinstance(node, _Stand):
        items: tuple[Any, ...] = tuple(finalize(v, seen) for v in node.items)
        items += tuple((finalize(k, seen), finalize(v, seen)) for k, v in node.pairs)
        out = ObjectPlaceholder(node.qualname, finalize(node.args, seen),
                                finalize(node.state, seen), items)
    elif isinstance(node, type) and issubclass(node, _Stand):
        out = ObjectPlaceholder("type", (node.qualname,))
    elif isinstance(node, StorageInfo):
        out = ObjectPlaceholder("torch.storage", (node.key, node.dtype, node.numel,
                                                  node.location))
    elif isinstance(node, _StorageType):
        out = ObjectPlaceholder("type", (f"torch storage of {node.dtype}",))
    elif callable(node) and not isinstance(node, TorchDtype):
        out = ObjectPlaceholder("type", (getattr(node, "__name__", repr(node)),))
    else:
        out = node  # TorchDtype, complex, slice, bytearray
    seen[id(node)] = out
    return out


def _key(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        return repr(key)
    return key


def to_json(value: Any) -> Any:
    """A JSON-safe rendering of a tree value; placeholders become ``{"__class__": name, ...}``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": len(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json(v) for v in value), key=repr)
    if isinstance(value, TorchDtype):
        return f"torch.{value.name}"
    if isinstance(value, TensorPlaceholder):
        return {"__tensor__": value.dtype, "shape": list(value.shape), "device": value.device}
    if isinstance(value, complex):
        return {"__complex__": [value.real, value.imag]}
    if isinstance(value, ObjectPlaceholder):
        return _placeholder_json(value)
    return repr(value)


def _placeholder_json(value: ObjectPlaceholder) -> dict[str, Any]:
    out: dict[str, Any] = {"__class__": value.class_name}
    if value.args:
        out["__args__"] = to_json(value.args)
    if isinstance(value.state, dict):
        out.update((str(k), to_json(v)) for k, v in value.state.items() if str(k) != "__class__")
    elif value.state is not None:
        out["__state__"] = to_json(value.state)
    if value.items:
        pairs = all(isinstance(i, tuple) and len(i) == 2 for i in value.items)
        if pairs:
            out.update((str(k), to_json(v)) for k, v in value.items if str(k) not in out)
        else:
            out["__items__"] = to_json(value.items)
    return out


def type_name(value: Any) -> str:
    """The ``ObjectEntry.type_name`` of a tree leaf."""
    if isinstance(value, ObjectPlaceholder):
        return value.class_name
    if isinstance(value, TorchDtype):
        return "torch.dtype"
    return type(value).__name__
