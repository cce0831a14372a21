"""Which globals a pickle may reference safely. (First cut; the scan work extends the lists.)

``safe`` globals are what ``torch.load(weights_only=True)`` allows; ``unsafe`` ones can run code;
everything else is ``unknown``: a third-party class whose code loading would need.
"""

from __future__ import annotations

from ckpttools.entries import Safety

SAFE_GLOBALS = frozenset({
    "collections.OrderedDict",
    "collections.defaultdict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.slice",
    "builtins.complex",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_nested_tensor",
    "torch.serialization._get_layout",
    "torch.Size",
    "torch.device",
    "torch.nn.parameter.Parameter",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Tensor",
    "_codecs.encode",  # protocol 2 pickles Python 3 bytes this way; weights_only allows it
})

UNSAFE_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "runpy", "webbrowser", "importlib", "pickle",
    "_pickle", "shutil", "socket", "pty", "code", "commands", "ctypes", "multiprocessing",
})
UNSAFE_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "__import__",
    "globals", "locals", "vars", "input", "breakpoint", "apply", "execfile",
})


def classify_global(module: str, name: str) -> tuple[Safety, str]:
    """Classify ``module.name``.

    Returns:
        ``(safety, reason)``; reason is empty for safe globals.
    """
    qualname = f"{module}.{name}"
    if qualname in SAFE_GLOBALS or (module == "torch" and name.endswith(("Storage", "dtype"))):
        return "safe", ""
    if module == "torch" and name in _TORCH_DTYPES:
        return "safe", ""
    root = module.split(".")[0]
    if root in UNSAFE_MODULES:
        return "unsafe", f"{qualname} can run code or touch the system"
    if module in ("builtins", "__builtin__") and name in UNSAFE_BUILTINS:
        return "unsafe", f"{qualname} can run arbitrary code"
    if qualname in ("torch.load", "torch.serialization.load"):
        return "unsafe", "a nested torch.load can unpickle anything"
    return "unknown", f"{qualname} is not a tensor or plain value; loading it needs its code"


_TORCH_DTYPES = frozenset({
    "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "complex128", "complex64", "complex32",
    "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
    "qint8", "quint8", "qint32", "double", "float", "half", "long", "int", "short", "cfloat",
})
