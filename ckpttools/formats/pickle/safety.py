"""Which globals a pickle may reference safely.

``safe`` globals are what ``torch.load(weights_only=True)`` allows (the allowlist of
``torch/_weights_only_unpickler.py``: tensor rebuild helpers, dtypes, storages, ``torch.Size``,
``collections.OrderedDict``, ...) plus plain data constructors; ``unsafe`` ones can run code,
touch files or the network, load another pickle, or reach something that can (an attribute
chain, a module alias, a scanner of pickles); everything else is ``unknown``: a third-party class
whose code loading would need.

The unsafe lists cover the published bypasses of the public pickle scanners, so that a
checkpoint that slips past them is still flagged here:

- picklescan ``_unsafe_globals`` and its advisories (mmaitre314/picklescan#14, #22, #46, #47, #52,
  #66, #74; GHSA-655q-fx9r-782v, GHSA-vvpj-8cmc-gx39 ``pkgutil.resolve_name``): ``operator``
  getters, ``functools.partial``, ``numpy.testing._private.utils.runstring``, ``pip``,
  ``code.InteractiveInterpreter``, ``asyncio`` subprocess transports, ``pydoc.locate``,
  ``bdb``/``pdb``/``timeit``/``cProfile``/``profile``/``trace``, ``idlelib``, ``lib2to3``,
  ``distutils.file_util``, ``_io.FileIO``, ``ctypes``, ``pty.spawn``, ``importlib``,
  ``marshal``, torch helpers (``torch.utils.collect_env.run``, ``torch._dynamo.guards``,
  ``torch.jit.unsupported_tensor_ops.execWrapper``, ``torch.utils._config_module``, ...);
- modelscan (protectai/modelscan#51 INST, #85 and #330 ``BUILD`` onto a function then
  ``STACK_GLOBAL`` through ``numpy.__builtins__``, #331 ``importlib`` + ``getattr`` chains,
  #338 ``multiprocessing.util.spawnv_passfds``, #339 ``ctypes``/``http``, #346 ``mailcap``);
- fickling (trailofbits/fickling#108 ``pty``, #190/#210 the picklescan set, #195 top-level
  package names, #249 scanner tampering, #287 dotted names such as ``pathlib`` ``os.system``,
  #302 private stdlib modules such as ``_interpreters``).
"""

from __future__ import annotations

import _compat_pickle
import sys

from ckpttools.entries import Safety

# torch._weights_only_unpickler._get_allowed_globals() (torch 2.13), minus the CUDA and sparse
# tensor-type aliases, which are matched by rule below.
SAFE_GLOBALS = frozenset({
    "collections.OrderedDict",
    "collections.Counter",
    "collections.defaultdict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.slice",
    "builtins.complex",
    "builtins.list",
    "builtins.tuple",
    "builtins.dict",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.bool",
    "builtins.bytes",
    "builtins.range",
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
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch.serialization._get_layout",
    "torch.Size",
    "torch.device",
    "torch.nn.parameter.Parameter",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Tensor",
    "torch.storage.TypedStorage",
    "torch.storage.UntypedStorage",
    "_codecs.encode",  # protocol 2 pickles Python 3 bytes this way; weights_only allows it
})

# Harmless alone: they build an object of a class that is itself a global, classified on its own.
_RECONSTRUCTORS = frozenset({"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"})
# Plain records in modules that are otherwise unsafe (configs pickle them).
_BENIGN = frozenset({"types.SimpleNamespace", "argparse.Namespace", "functools._lru_cache_wrapper"})

# Any global of these packages (or their submodules) is unsafe.
UNSAFE_MODULES = frozenset({
    # processes, the OS, the interpreter itself
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "runpy", "pty", "commands",
    "multiprocessing", "_multiprocessing", "concurrent", "threading", "_thread", "signal",
    "asyncio", "_winapi", "msvcrt", "winreg", "_winreg", "resource", "fcntl", "mmap",
    "ctypes", "_ctypes", "cffi", "gc", "inspect", "types", "_interpreters",
    "_xxsubinterpreters", "_testcapi", "_testinternalcapi", "site", "sysconfig", "atexit",
    # code from strings, bytes or files
    "code", "codeop", "compileall", "py_compile", "marshal", "importlib", "imp", "pkgutil",
    "zipimport", "runpy", "pydoc", "pydoc_data", "doctest", "unittest", "bdb", "pdb",
    "profile", "cProfile", "trace", "timeit", "idlelib", "lib2to3", "tkinter", "turtle",
    "cgi", "cgitb", "mailcap", "xmlrpc", "logging", "operator", "_operator", "functools",
    "copyreg", "copy_reg", "dis",
    # nested unpicklers and object stores
    "pickle", "_pickle", "cPickle", "pickletools", "shelve", "dbm", "dill", "cloudpickle",
    "joblib", "jsonpickle", "yaml", "torch_pickle",
    # files and archives
    "shutil", "tempfile", "io", "_io", "fileinput", "tarfile", "zipfile", "zipapp", "glob",
    "distutils", "setuptools", "pkg_resources", "pip", "_pip", "ensurepip", "venv",
    # the network
    "socket", "_socket", "ssl", "_ssl", "http", "httplib", "urllib", "urllib2", "urllib3",
    "requests", "aiohttp", "httpx", "ftplib", "smtplib", "telnetlib", "poplib", "imaplib",
    "nntplib", "socketserver", "webbrowser", "select", "selectors",
    # scanners of pickles: a pickle that imports one means to tamper with it
    "picklescan", "fickling", "modelscan", "modelaudit", "ckpttools",
})

# Submodules or members of otherwise unclassified packages that are unsafe.
UNSAFE_PREFIXES = (
    "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.ctypeslib", "numpy.lib.npyio",
    "numpy.lib.format", "numpy.load", "numpy.loadtxt", "numpy.fromfile", "numpy.save",
    "numpy.core._internal", "numpy._core._internal", "numpy.lib.utils",
    "pandas.read_pickle", "pandas.io", "pandas.eval", "pandas.core.computation",
    "scipy.io", "sklearn.externals", "keras.saving", "tensorflow.io",
    "torch.load", "torch.serialization.load", "torch.storage._load_from_bytes", "torch.serialization._load",
    "torch.serialization._legacy_load", "torch.hub", "torch._C", "torch.jit", "torch._jit_internal",
    "torch.utils.collect_env", "torch.utils.bottleneck", "torch.utils._config_module",
    "torch.utils.data.datapipes", "torch.utils.cpp_extension", "torch.utils.model_zoo",
    "torch.utils.hooks", "torch._dynamo", "torch._inductor", "torch.fx", "torch.package",
    "torch.distributed.rpc", "torch.compiler", "torch._ops", "torch.ops", "torch.library",
    "torch.backends", "torch.cuda.memory", "torch.multiprocessing", "torch._export",
    "torch.export", "torch.onnx", "torch.testing", "torch.utils.benchmark", "torch._higher_order",
    "mlflow", "transformers.dynamic_module_utils", "transformers.utils.hub",
    "huggingface_hub", "lightning.pytorch.cli", "jinja2", "IPython",
)

# builtins that only build data; every other builtin (eval, exec, getattr, __import__, open, ...)
# is unsafe.
_DATA_BUILTINS = frozenset({
    "set", "frozenset", "bytearray", "slice", "complex", "list", "tuple", "dict", "int", "float",
    "str", "bool", "bytes", "range", "object", "NotImplemented", "Ellipsis",
})
UNSAFE_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "__import__",
    "globals", "locals", "vars", "input", "breakpoint", "apply", "execfile", "reload",
    "file", "help", "exit", "quit", "memoryview", "type", "super", "classmethod",
    "staticmethod", "property", "__loader__", "__spec__", "__build_class__", "print", "map",
    "filter", "iter", "next", "callable", "hasattr", "dir", "id", "hash", "sorted",
})

_TORCH_DTYPES = frozenset({
    "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "complex128",
    "complex64", "complex32", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32",
    "uint64", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "double", "float",
    "half", "long", "int", "short", "cfloat", "cdouble", "bits8", "bits16", "bits1x8",
    "bits2x4", "bits4x2", "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
    "per_channel_symmetric", "per_channel_affine_float_qparams", "strided", "sparse_coo",
    "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn",
    *(f"int{i}" for i in range(1, 8)), *(f"uint{i}" for i in range(1, 8)),
})
_TORCH_TYPE_MODULES = ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse")
_STDLIB = frozenset(sys.stdlib_module_names)
_UNSAFE_LOWER = frozenset(m.lower() for m in UNSAFE_MODULES)


def normalize_global(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 spellings (``__builtin__``, ``copy_reg``) to what the unpickler imports."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# Plain records that torch.distributed.checkpoint writes into its ``.metadata`` pickle.
_DCP_RECORDS = frozenset({
    "torch.distributed.checkpoint.filesystem._StorageInfo", "pathlib.PosixPath",
    "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
})


def _is_safe(module: str, name: str) -> bool:
    qualname = f"{module}.{name}"
    if qualname in SAFE_GLOBALS or qualname in _DCP_RECORDS:
        return True
    if module == "torch.distributed.checkpoint.metadata" and "." not in name:
        return True
    if module in _TORCH_TYPE_MODULES and name.endswith(("Storage", "Tensor")) and "." not in name:
        return name[:1].isupper()
    return module == "torch" and name in _TORCH_DTYPES


def _unsafe_module(module: str) -> str | None:
    """The unsafe package or prefix ``module`` falls under, if any. The top-level package is
    compared case-insensitively, so that case-insensitive file systems cannot hide ``OS``."""
    top = module.split(".")[0]
    if top.lower() in _UNSAFE_LOWER:
        return top
    for prefix in UNSAFE_PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    # private stdlib modules (``_interpreters``, ``_posixsubprocess``) expose raw primitives;
    # ``_codecs.encode`` is the one torch itself allows
    if top.startswith("_") and top in _STDLIB and module != "_codecs":
        return top
    return None


def _unsafe_name(module: str, name: str) -> str | None:
    """Why ``name`` itself is unsafe: an attribute chain, a dunder or a dangerous builtin."""
    qualname = f"{module}.{name}"
    parts = name.split(".")
    for part in parts:
        if part.startswith("__") and part.endswith("__") and qualname not in _RECONSTRUCTORS:
            return f"{qualname} reaches interpreter internals ({part})"
        # a module re-exported as an attribute (``torch.os``, ``tempfile._os``, ``numpy.sys``)
        if part in UNSAFE_MODULES or part.lstrip("_") in UNSAFE_MODULES:
            return f"{qualname} reaches the {part.lstrip('_')} module"
    # ``Outer.Inner`` is how protocol 4 names a nested class; any other dotted name reads an
    # attribute of a function or module (modelscan#85: ``numpy.prod.a`` after a BUILD set it)
    if len(parts) > 1 and not all(p[:1].isupper() for p in parts):
        return f"{qualname} walks attributes of another global"
    if module == "builtins" and name not in _DATA_BUILTINS:
        if name in UNSAFE_BUILTINS:
            return f"builtins.{name} can run arbitrary code"
        return f"builtins.{name} is not a data type; pickles of weights never need it"
    return None


def classify_global(module: str, name: str) -> tuple[Safety, str]:
    """Classify ``module.name`` as a pickle's GLOBAL/STACK_GLOBAL/INST would import it.

    Args:
        module: the module name as written in the pickle (Python 2 names are mapped).
        name: the attribute name; dots (``os.system``) are attribute chains and checked
            component by component.

    Returns:
        ``(safety, reason)``; reason is empty for safe globals.
    """
    module, name = normalize_global(module, name)
    qualname = f"{module}.{name}"
    if not module or not name:
        return "unsafe", f"{qualname!r}: empty module or name; not something a save writes"
    why = _unsafe_name(module, name)
    if why:
        return "unsafe", why
    if _is_safe(module, name):
        return "safe", ""
    if qualname in _RECONSTRUCTORS:
        return "unknown", f"{qualname} rebuilds an object; its class is listed on its own"
    if qualname in _BENIGN:
        return "unknown", f"{qualname} is a plain record, not a tensor; loading it needs --trust"
    hit = _unsafe_module(qualname)
    if hit is not None:
        if qualname in ("torch.load", "torch.serialization.load") or hit in ("pickle", "_pickle"):
            return "unsafe", f"{qualname}: a nested load can unpickle anything"
        return "unsafe", f"{qualname} can run code or touch the system ({hit})"
    return "unknown", f"{qualname} is not a tensor or plain value; loading it needs its code"
