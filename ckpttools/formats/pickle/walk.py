"""A restricted pickle reader: builds the pickled structure without calling any global it
does not know, and without importing torch.

Tensors become ``TensorPlaceholder`` records, classes it does not know become
``ObjectPlaceholder`` records of their recorded arguments and state, and every global the
pickle names is reported with its safety class. Dangerous callables are recorded, never called.

The fast path is the C unpickler with ``find_class`` returning stand-ins. Before it runs, a
linear scan of the opcode stream checks every length and memo index against the bytes present,
so a malformed pickle cannot make the unpickler allocate more than the data it holds.
"""

from __future__ import annotations

import _compat_pickle
import gc
import io
import pickle
import pickletools
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ckpttools.entries import GlobalRef
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.pickle import stand_ins as st
from ckpttools.formats.pickle.genops import OpcodeError
from ckpttools.formats.pickle.guard import proven_end
from ckpttools.formats.pickle.opwalk import pickle_hazard
from ckpttools.formats.pickle.plain_state import read_plain_state
from ckpttools.formats.pickle.safety import add_safe_globals_line, is_torch_default
from ckpttools.formats.pickle.stand_ins import StorageInfo, TensorPlaceholder, TorchDtype

__all__ = [
    "StorageInfo",
    "TensorPlaceholder",
    "TorchDtype",
    "WalkResult",
    "safe_globals_hint",
    "scan_pickle",
    "walk_pickle",
]


@dataclass(frozen=True)
class WalkResult:
    """What a restricted walk of one pickle found.

    Attributes:
        tree: the pickled structure with placeholders for tensors and unknown objects.
        globals: every global referenced, in order of first use, classified.
        storages: torch storages referenced by persistent id, by storage key.
        end: offset just past the pickle's STOP opcode in the data given.
    """

    tree: Any
    globals: tuple[GlobalRef, ...]
    storages: dict[str, StorageInfo] = field(default_factory=dict)
    end: int = 0

    @property
    def unsafe_globals(self) -> tuple[GlobalRef, ...]:
        return tuple(g for g in self.globals if g.safety == "unsafe")


# ---- opcode scan: lengths and memo indices checked against the data ------------------------

_LINE, _TWO_LINES, _COUNT1, _COUNT4, _COUNT4S, _COUNT8 = -1, -2, -3, -4, -5, -6
_ARGLEN = [-100] * 256  # -100: not an opcode
for _op in pickletools.opcodes:
    _arg = _op.arg
    _code = ord(_op.code)
    if _arg is None:
        _ARGLEN[_code] = 0
    elif _arg.n >= 0:
        _ARGLEN[_code] = _arg.n
    elif _arg.n == pickletools.UP_TO_NEWLINE:
        _ARGLEN[_code] = _TWO_LINES if _op.name in ("GLOBAL", "INST") else _LINE
    elif _arg.n == pickletools.TAKEN_FROM_ARGUMENT1:
        _ARGLEN[_code] = _COUNT1
    elif _arg.n == pickletools.TAKEN_FROM_ARGUMENT4:
        _ARGLEN[_code] = _COUNT4S
    elif _arg.n == pickletools.TAKEN_FROM_ARGUMENT4U:
        _ARGLEN[_code] = _COUNT4
    elif _arg.n == pickletools.TAKEN_FROM_ARGUMENT8U:
        _ARGLEN[_code] = _COUNT8
_STOP, _LONG_BINPUT, _PUT, _FRAME, _BINUNICODE = ord("."), ord("r"), ord("p"), 0x95, ord("X")
_COUNT_SIZE = {_COUNT1: 1, _COUNT4: 4, _COUNT4S: 4, _COUNT8: 8}


def _run_pattern() -> re.Pattern[bytes]:
    """A regex over runs of fixed-size opcodes that need no check (the C engine skips them
    fast); STOP, FRAME, memo puts beyond 2**20 and counted or text opcodes end a run, but
    for short BINUNICODEs, whose length the pattern spells out."""
    groups: dict[int, list[bytes]] = {}
    for op in pickletools.opcodes:
        n = 0 if op.arg is None else op.arg.n
        if n >= 0 and op.name not in ("STOP", "FRAME", "LONG_BINPUT"):
            groups.setdefault(n, []).append(re.escape(op.code.encode("latin-1")))
    alts = [b"[" + b"".join(codes) + b"]" + b"[\\s\\S]" * n for n, codes in groups.items()]
    alts.append(b"r[\\s\\S]{2}[\\x00-\\x0f]\\x00")
    # a BINUNICODE of 1 to 9 bytes with its text (torch's storage keys, one per tensor): each
    # length its own literal, so a run never reads past the data; longer ones end a run
    alts.append(b"X(?:" + b"|".join(b"%s\\x00\\x00\\x00[\\s\\S]{%d}" % (re.escape(bytes([k])), k)
                                   for k in range(1, 10)) + b")")
    return re.compile(b"(?:" + b"|".join(alts) + b")*")


_RUN = _run_pattern()
PLAIN_STATES = True  # read a plain dict of tensor records directly (``plain_state``); tests compare
GUARD_PROOFS = True  # take the scan's proof for the bytes it walked (``guard``); tests compare


def scan_pickle(data: Any, start: int = 0) -> int:
    """Check one pickle's opcode stream and return the offset just past its STOP.

    Args:
        data: ``bytes`` or an ``mmap`` (anything with ``find`` and int indexing).
        start: where the pickle starts.

    Raises:
        ValueError: an unknown opcode, a length or memo index beyond the data, or no STOP.
    """
    n = len(data)
    run = _RUN.match
    pos = start
    while pos < n:
        pos = run(data, pos).end()  # type: ignore[union-attr]  # "*" always matches
        if pos >= n:
            break
        op = data[pos]
        if op == _STOP:
            return pos + 1
        if op == _BINUNICODE:  # two per tensor: _step's check for it, without the call
            end = pos + 5 + int.from_bytes(data[pos + 1:pos + 5], "little")
            if end > n:
                raise ValueError(f"an argument at offset {pos} runs past the end")
            pos = end
            continue
        pos = _step(data, op, pos + 1, n)
    raise ValueError("truncated (no STOP opcode)")


def _step(data: Any, op: int, pos: int, n: int) -> int:
    """Check the argument of the opcode ``op`` starting at ``pos``; return the next offset."""
    k = _ARGLEN[op]
    if k >= 0:
        if op == _LONG_BINPUT and int.from_bytes(data[pos:pos + 4], "little") > n:
            raise ValueError(f"memo index beyond the data at offset {pos - 1}")
        if op == _FRAME and int.from_bytes(data[pos:pos + 8], "little") > n - pos - 8:
            raise ValueError(f"a frame at offset {pos - 1} runs past the end")
        end = pos + k
    elif k >= _TWO_LINES:  # one or two newline-terminated arguments
        end = pos
        for _ in range(-k):
            pos, end = end, data.find(b"\n", end)
            if end < 0:
                raise ValueError("truncated text argument")
            if op == _PUT and not (data[pos:end].isdigit() and int(data[pos:end]) <= n):
                raise ValueError(f"bad memo index at offset {pos - 1}")
            end += 1
    elif k == -100:
        raise ValueError(f"unknown opcode 0x{op:02x} at offset {pos - 1}")
    else:
        size = _COUNT_SIZE[k]
        count = int.from_bytes(data[pos:pos + size], "little", signed=k == _COUNT4S)
        end = pos + size + count
        if count < 0:
            raise ValueError(f"negative length at offset {pos - 1}")
    if end > n:
        raise ValueError(f"an argument at offset {pos - 1} runs past the end")
    return end


# ---- the unpickler -------------------------------------------------------------------------


class _Unpickler(pickle.Unpickler):
    """The C unpickler with every global replaced by a stand-in."""

    def __init__(self, file: BinaryIO, name: str, on_global: Callable[[str, str], Any]) -> None:
        super().__init__(file)
        self._on_global = on_global

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return self._on_global(module, name)


def walk_pickle(
    data: Any,
    *,
    name: str = "",
    offset: int = 0,
    persistent_load: Callable[[Any], Any] | None = None,
) -> WalkResult:
    """Build a pickle's structure without executing it.

    Args:
        data: the pickle as ``bytes``, an ``mmap`` or a binary file. Bytes after the pickle's
            STOP opcode are ignored; ``WalkResult.end`` says where it ended.
        name: how the pickle is named in messages and ``GlobalRef.pickle`` (``archive/data.pkl``).
        offset: where the pickle starts in ``data``.
        persistent_load: maps persistent ids to values; the default understands torch storages.

    Returns:
        The tree, the globals referenced and the torch storages referenced.

    Raises:
        CorruptCheckpointError: the bytes are not a well-formed pickle.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif hasattr(data, "read") and not hasattr(data, "find"):
        data = data.read()
    label = name or "pickle"
    end = proven_end(data, offset) if GUARD_PROOFS else None  # scanned a moment ago (inspect)
    try:
        end = scan_pickle(data, offset) if end is None else end
    except (ValueError, IndexError) as e:
        raise CorruptCheckpointError(f"{label}: malformed pickle: {e}") from e
    try:
        hazard = pickle_hazard(data[offset:end])
    except OpcodeError as e:
        raise CorruptCheckpointError(f"{label}: malformed pickle: {e}") from e
    if hazard:
        raise CorruptCheckpointError(f"{label}: {hazard}; refused")
    plain = read_plain_state(data, offset, name) if PLAIN_STATES and not persistent_load else None
    if plain is not None and plain[3] == end:  # a dict of tensor records, read without unpickling
        return WalkResult(plain[0], plain[1], plain[2], end)
    ctx = st.WalkContext(name)
    unpickler = _Unpickler(io.BufferedReader(io.BytesIO(data[offset:end])), name,
                           ctx.resolve_global)
    unpickler.persistent_load = persistent_load or ctx.torch_persistent_load  # type: ignore
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the walk builds many small containers and no cycles worth collecting
    try:
        tree = _on_deep_stack(lambda: st.finalize(unpickler.load()))
    except RecursionError as e:
        raise CorruptCheckpointError(f"{label}: pickle nests too deeply to read") from e
    except MemoryError as e:
        raise CorruptCheckpointError(f"{label}: malformed pickle: out of memory") from e
    except Exception as e:  # the stand-ins and the unpickler raise many types on bad input
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptCheckpointError(f"{label}: malformed pickle: {msg}") from e
    finally:
        if gc_was_enabled:
            gc.enable()
    return WalkResult(tree, tuple(ctx.globals.values()), dict(ctx.storages), end)


_DEEP_STACK = 512 << 20  # bytes of stack for the walk's thread: legitimate nesting runs deep
_DEEP_RECURSION = 40_000


def _on_deep_stack(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread with a large stack and recursion limit, so that structures
    nested a few thousand deep (600-deep dicts are legitimate) are read, and deeper ones end
    in ``RecursionError`` rather than a crash."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            out["error"] = e

    old_limit = sys.getrecursionlimit()
    old_size = threading.stack_size(_DEEP_STACK)
    sys.setrecursionlimit(max(old_limit, _DEEP_RECURSION))
    try:
        thread = threading.Thread(target=run, name="ckpttools-walk")
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old_size)
        sys.setrecursionlimit(old_limit)
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- torch.load(weights_only=True) hints ---------------------------------------------------


def safe_globals_hint(globals_: tuple[GlobalRef, ...] | list[GlobalRef]) -> str | None:
    """The ``add_safe_globals`` line that lets ``torch.load(weights_only=True)`` read a file whose
    only obstacles are benign classes (``argparse.Namespace``, numpy scalars).

    Returns:
        The line to print, or None when nothing needs allowing or an unsafe global is present
        (allowing it would be wrong).
    """
    if any(g.safety == "unsafe" for g in globals_):
        return None
    names: list[str] = []
    for g in globals_:
        if not is_torch_default(g.module, g.name) and g.qualname not in names:
            names.append(g.qualname)
    return add_safe_globals_line(names) if names else None


def placeholder_json(value: Any) -> Any:
    """A JSON-safe rendering of a tree value (placeholders become ``{"__class__": ...}``)."""
    return st.to_json(value)


__all__.append("placeholder_json")
__all__.append("ObjectPlaceholder")
