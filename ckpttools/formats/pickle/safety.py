"""Which globals a pickle may reference safely: an allowlist, not a denylist.

A global is ``safe`` only when it is on ``ALLOWED`` (or matches one of its families): a callable
that is harmless with any arguments, and whose result is harmless when ``BUILD`` sets state on
it. Everything else fails closed. The few known code-execution gadgets are ``unsafe`` ("runs
code"); every other global is ``unknown`` ("not proven safe"). Both make ``scan``, ``inspect``
and ``audit`` exit 1. A user can lift an ``unknown`` global (never an ``unsafe`` one) with
``--allow GLOBAL`` or ``allow-globals`` in the settings.

Review rule (docs/safety.md): a global joins ``ALLOWED`` only if calling it with any arguments a
pickle can build cannot import a module, run code other than its own constructor, touch files,
the network, processes or the environment, or unpickle anything; each entry states why in one
line and ``tests/formats/pickle/test_safety.py`` names it. torch's own ``weights_only`` defaults
(``torch/_weights_only_unpickler.py`` ``_get_allowed_globals``) are taken as reviewed.

The ``unsafe`` lists name published gadgets and scanner bypasses so the report can say "runs
code": picklescan ``_unsafe_globals`` and its advisories (mmaitre314/picklescan#14, #22, #46,
#47, #52, #66, #74; GHSA-655q-fx9r-782v, GHSA-vvpj-8cmc-gx39), modelscan (protectai/modelscan
#51, #85, #330, #331, #338, #339, #346), fickling (trailofbits/fickling#108, #190, #195, #249,
#287, #302), and the 2024-2026 gadgets of ckpttools#14 (``typing._eval_type``,
``dataclasses._create_fn``, ``sympy.sympify``, ``numpy.savetxt``, ``torch.from_file``, ...).
"""

from __future__ import annotations

import _compat_pickle
import sys

from ckpttools.entries import Safety

# qualname -> why calling it with any arguments is harmless.
ALLOWED: dict[str, str] = {
    # torch.load(weights_only=True) defaults (torch/_weights_only_unpickler.py)
    "collections.OrderedDict": "a dict; torch weights_only default",
    "collections.Counter": "a dict of counts; torch weights_only default",
    "builtins.set": "a set of already-built values; torch weights_only default",
    "builtins.bytearray": "bytes from a value; torch weights_only default",
    "builtins.complex": "a number; torch weights_only default",
    "_codecs.encode": "str to bytes (protocol 2 bytes); torch weights_only default",
    "torch.Size": "a tuple of ints; torch weights_only default",
    "torch.device": "a device name; torch weights_only default",
    "torch.Tensor": "the tensor class; torch weights_only default",
    "torch.nn.parameter.Parameter": "wraps a tensor; torch weights_only default",
    "torch.serialization._get_layout": "looks a layout up by name; torch weights_only default",
    "torch._tensor._rebuild_from_type_v2": "tensor subclass rebuild; torch weights_only default",
    "torch.storage.TypedStorage": "a storage; torch weights_only default",
    "torch.storage.UntypedStorage": "a storage; torch weights_only default",
    **{f"torch._utils.{f}": "tensor rebuild; torch weights_only default" for f in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_sparse_tensor", "_rebuild_qtensor",
        "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_nested_tensor",
        "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor")},
    # plain data constructors of the builtins
    **{f"builtins.{n}": "a builtin data type; only builds a value" for n in (
        "frozenset", "slice", "list", "tuple", "dict", "int", "float", "str", "bool", "bytes",
        "range", "object")},
    "collections.defaultdict": "a dict; its factory is a global checked on its own",
    "collections.deque": "a list-like container",
    # object reconstruction: the class is a global checked on its own
    "copyreg._reconstructor": "object.__new__ of a class that is checked on its own",
    "copyreg.__newobj__": "cls.__new__ of a class that is checked on its own",
    "copyreg.__newobj_ex__": "cls.__new__ of a class that is checked on its own",
    # plain records configs and trainers pickle
    "argparse.Namespace": "attributes only",
    "types.SimpleNamespace": "attributes only",
    **{f"pathlib.{n}": "a path value; nothing is opened" for n in (
        "Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")},
    **{f"datetime.{n}": "a date/time value" for n in (
        "datetime", "date", "time", "timedelta", "timezone")},
    "decimal.Decimal": "a number",
    "fractions.Fraction": "a number",
    "uuid.UUID": "a 128-bit value",
    # numpy arrays, scalars and RNG states (object arrays hold values pickled inline)
    **{f"{m}.{n}": "numpy array/scalar reconstruction from bytes" for m in (
        "numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")},
    **{f"{m}._frombuffer": "an array from a protocol-5 buffer" for m in (
        "numpy.core.numeric", "numpy._core.numeric")},
    "numpy.ndarray": "the array class; state is shape, dtype and bytes",
    "numpy.dtype": "a dtype from its name",
    "numpy.random._pickle.__randomstate_ctor": "a RandomState from a bit generator name",
    "numpy.random._pickle.__generator_ctor": "a Generator from a bit generator",
    "numpy.random._pickle.__bit_generator_ctor": "a bit generator looked up by name",
    **{f"numpy.random.{n}": "a bit generator; state is numbers" for n in (
        "_mt19937.MT19937", "_pcg64.PCG64", "_pcg64.PCG64DXSM", "_philox.Philox",
        "_sfc64.SFC64", "bit_generator.SeedSequence", "bit_generator.__pyx_unpickle_SeedSequence")},
    "_io.BytesIO": "an in-memory buffer (DCP bytes items); opens no file",
    "io.BytesIO": "an in-memory buffer (DCP bytes items); opens no file",
    # torch.distributed.checkpoint .metadata records
    "torch.distributed.checkpoint.filesystem._StorageInfo": "a DCP byte range record",
}

# Families allowed by rule (torch builds these names from its own tables).
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
_DCP_METADATA = "torch.distributed.checkpoint.metadata"


def _allowed(module: str, name: str) -> bool:
    if f"{module}.{name}" in ALLOWED:
        return True
    if "." in name:
        return False
    if module in _TORCH_TYPE_MODULES and name.endswith(("Storage", "Tensor")):
        return name[:1].isupper()  # torch.FloatStorage, torch.cuda.HalfTensor
    if module == _DCP_METADATA:
        return name[:1].isupper() or name == "_MEM_FORMAT_ENCODING"  # DCP's dataclass records
    if module == "numpy.dtypes":
        return name.endswith("DType")
    return module == "torch" and name in _TORCH_DTYPES


# ---- known gadgets: "runs code" ------------------------------------------------------------

# Any global of these packages (or their submodules) can run code or touch the system.
UNSAFE_MODULES = frozenset({
    # processes, the OS, the interpreter itself
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "runpy", "pty", "commands",
    "multiprocessing", "_multiprocessing", "concurrent", "threading", "_thread", "signal",
    "asyncio", "_winapi", "msvcrt", "winreg", "_winreg", "resource", "fcntl", "mmap",
    "ctypes", "_ctypes", "cffi", "gc", "inspect", "types", "_interpreters",
    "_xxsubinterpreters", "_testcapi", "_testinternalcapi", "site", "sysconfig", "atexit",
    "test", "typing", "typing_extensions", "dataclasses", "abc", "enum", "string", "ast",
    # code from strings, bytes or files
    "code", "codeop", "compileall", "py_compile", "marshal", "importlib", "imp", "pkgutil",
    "zipimport", "pydoc", "pydoc_data", "doctest", "unittest", "bdb", "pdb",
    "profile", "cProfile", "trace", "timeit", "idlelib", "lib2to3", "tkinter", "turtle",
    "cgi", "cgitb", "mailcap", "xmlrpc", "logging", "operator", "_operator", "functools",
    "copyreg", "copy_reg", "dis", "sympy", "numexpr", "jinja2", "IPython",
    # nested unpicklers and object stores
    "pickle", "_pickle", "cPickle", "pickletools", "shelve", "dbm", "dill", "cloudpickle",
    "joblib", "jsonpickle", "yaml", "torch_pickle",
    # files, archives, databases
    "shutil", "tempfile", "io", "_io", "fileinput", "tarfile", "zipfile", "zipapp", "glob",
    "codecs", "gzip", "bz2", "lzma", "sqlite3", "_sqlite3", "mailbox", "wave", "aifc",
    "sunau", "netrc", "linecache", "filecmp", "networkx",
    "distutils", "setuptools", "pkg_resources", "pip", "_pip", "ensurepip", "venv",
    # the network
    "socket", "_socket", "ssl", "_ssl", "http", "httplib", "urllib", "urllib2", "urllib3",
    "requests", "aiohttp", "httpx", "ftplib", "smtplib", "telnetlib", "poplib", "imaplib",
    "nntplib", "socketserver", "webbrowser", "select", "selectors",
    # scanners of pickles: a pickle that imports one means to tamper with it
    "picklescan", "fickling", "modelscan", "modelaudit", "ckpttools",
})

# Submodules or members of otherwise unclassified packages that can run code or touch files.
UNSAFE_PREFIXES = (
    "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.ctypeslib", "numpy.lib.npyio",
    "numpy.lib._npyio_impl", "numpy.lib.format", "numpy.load", "numpy.loadtxt", "numpy.fromfile",
    "numpy.save", "numpy.savez", "numpy.savetxt", "numpy.memmap", "numpy.genfromtxt",
    "numpy.tofile", "numpy.core._internal", "numpy._core._internal", "numpy.lib.utils",
    "numpy.core.memmap", "numpy._core.memmap", "pandas.read_pickle", "pandas.io",
    "pandas.eval", "pandas.core.computation", "scipy.io", "sklearn.externals", "keras.saving",
    "tensorflow.io", "torch.load", "torch.save", "torch.from_file", "torch.serialization",
    "torch.storage._load_from_bytes", "torch.hub", "torch._C", "torch.jit", "torch._jit_internal",
    "torch.utils.collect_env", "torch.utils.bottleneck", "torch.utils._config_module",
    "torch.utils.data.datapipes", "torch.utils.cpp_extension", "torch.utils.model_zoo",
    "torch.utils.hooks", "torch._dynamo", "torch._inductor", "torch.fx", "torch.package",
    "torch.distributed", "torch.compiler", "torch._ops", "torch.ops", "torch.library",
    "torch.backends", "torch.cuda.memory", "torch.multiprocessing", "torch._export",
    "torch.export", "torch.onnx", "torch.testing", "torch.utils.benchmark", "torch._higher_order",
    "mlflow", "transformers.dynamic_module_utils", "transformers.utils.hub",
    "huggingface_hub", "lightning.pytorch.cli",
)

# Members of a gadget prefix that are plain constructors: off the allowlist (not proven safe), but
# no gadget. ``StringDType.__reduce__`` (numpy 2) returns this two-line ``StringDType(...)`` call.
NOT_GADGETS = frozenset({
    "numpy._core._internal._convert_to_stringdtype_kwargs",
    "numpy.core._internal._convert_to_stringdtype_kwargs",
})

UNSAFE_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "__import__",
    "globals", "locals", "vars", "input", "breakpoint", "apply", "execfile", "reload",
    "file", "help", "exit", "quit", "memoryview", "type", "super", "classmethod",
    "staticmethod", "property", "__loader__", "__spec__", "__build_class__", "print", "map",
    "filter", "iter", "next", "callable", "hasattr", "dir", "id", "hash", "sorted",
})
_STDLIB = frozenset(sys.stdlib_module_names)
_UNSAFE_LOWER = frozenset(m.lower() for m in UNSAFE_MODULES)


def normalize_global(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 spellings (``__builtin__``, ``copy_reg``) to what the unpickler imports."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _unsafe_module(qualname: str) -> str | None:
    """The gadget package or prefix ``qualname`` falls under, if any. The top-level package is
    compared case-insensitively, so that case-insensitive file systems cannot hide ``OS``."""
    top = qualname.split(".")[0]
    if top.lower() in _UNSAFE_LOWER:
        return top
    for prefix in UNSAFE_PREFIXES:
        if qualname == prefix or qualname.startswith(prefix + "."):
            return prefix
    # private stdlib modules (``_interpreters``, ``_posixsubprocess``) expose raw primitives
    if top.startswith("_") and top in _STDLIB:
        return top
    return None


def _unsafe_name(module: str, name: str) -> str | None:
    """Why ``name`` itself runs code: an attribute chain, a dunder or a dangerous builtin."""
    qualname = f"{module}.{name}"
    parts = name.split(".")
    for part in parts:
        if part.startswith("__") and part.endswith("__"):
            return f"{qualname} reaches interpreter internals ({part})"
        # a module re-exported as an attribute (``torch.os``, ``tempfile._os``, ``numpy.sys``)
        if part in UNSAFE_MODULES or part.lstrip("_") in UNSAFE_MODULES:
            return f"{qualname} reaches the {part.lstrip('_')} module"
    # ``Outer.Inner`` is how protocol 4 names a nested class; any other dotted name reads an
    # attribute of a function or module (modelscan#85: ``numpy.prod.a`` after a BUILD set it)
    if len(parts) > 1 and not all(p[:1].isupper() for p in parts):
        return f"{qualname} walks attributes of another global"
    if module == "builtins" and name in UNSAFE_BUILTINS:
        return f"builtins.{name} can run arbitrary code"
    return None


def classify_global(module: str, name: str) -> tuple[Safety, str]:
    """Classify ``module.name`` as a pickle's GLOBAL/STACK_GLOBAL/INST would import it.

    Args:
        module: the module name as written in the pickle (Python 2 names are mapped).
        name: the attribute name; dots (``os.system``) are attribute chains.

    Returns:
        ``(safety, reason)``: ``safe`` (on the allowlist; reason empty), ``unsafe`` (a known
        code-execution gadget) or ``unknown`` (not proven safe).
    """
    module, name = normalize_global(module, name)
    qualname = f"{module}.{name}"
    if not module or not name:
        return "unsafe", f"{qualname!r}: empty module or name; not something a save writes"
    if _allowed(module, name):
        return "safe", ""
    why = _unsafe_name(module, name)
    if why:
        return "unsafe", why
    hit = None if qualname in NOT_GADGETS else _unsafe_module(qualname)
    if hit is not None:
        if qualname in ("torch.load", "torch.serialization.load") or hit in ("pickle", "_pickle"):
            return "unsafe", f"{qualname}: a nested load can unpickle anything"
        return "unsafe", f"{qualname} can run code or touch the system ({hit})"
    return "unknown", (f"{qualname} is not on the allowlist of globals proven harmless; "
                       "loading runs its code")


def is_torch_default(module: str, name: str) -> bool:
    """Whether ``torch.load(weights_only=True)`` allows ``module.name`` without
    ``add_safe_globals`` (numpy records and ``argparse.Namespace`` are safe here, not there)."""
    module, name = normalize_global(module, name)
    reason = ALLOWED.get(f"{module}.{name}")
    if reason is not None:
        return "torch weights_only default" in reason
    return module in _TORCH_TYPE_MODULES and _allowed(module, name)


def is_allowed_by_user(qualname: str, allow: frozenset[str] | set[str] | tuple[str, ...]) -> bool:
    """Whether a user's ``allow-globals`` entry names ``qualname`` (exactly, or ``pkg.*``)."""
    return qualname in allow or any(
        a.endswith(".*") and qualname.startswith(a[:-1]) for a in allow)


# Classes torch's weights_only unpickler cannot rebuild even when allowed: it fills only lists
# (APPENDS) and dicts of a few types (SETITEMS), so no add_safe_globals line reads them.
UNBUILDABLE = ("collections.deque", "collections.defaultdict")


def add_safe_globals_line(names: list[str] | tuple[str, ...]) -> str:
    """The line that lets ``torch.load(weights_only=True)`` read a file needing ``names``, or a
    comment saying that none does (a ``deque`` in the file)."""
    stuck = [n for n in names if n in UNBUILDABLE]
    if stuck:
        return (f"# no line does: torch.load(weights_only=True) cannot rebuild {', '.join(stuck)} "
                "even when allowed; only torch.load(weights_only=False) reads it, which runs "
                "the pickle: use it only for a file you trust")
    imports = sorted({n.rsplit(".", 1)[0] for n in names})
    allowed = list(names)
    if "numpy.dtype" in names:
        # torch's unpickler also checks the type of each dtype it BUILDs (numpy.dtypes.Float32DType
        # ...), which the pickle never names. ObjectDType too: an object array's elements are
        # unpickled by the same restricted unpickler, so allowing the dtype admits no new global
        allowed.append("*(type(numpy.dtype(c)) for c in numpy.typecodes['All'])")
    return (f"import {', '.join(imports)}; import torch; "
            f"torch.serialization.add_safe_globals([{', '.join(allowed)}])")
