"""A static walk of one pickle's opcodes that names every global it would import and every call
it would make, without importing or calling anything.

A small symbolic stack follows the pickle machine closely enough to resolve ``STACK_GLOBAL``
operands through the memo (``PUT``/``BINPUT``/``MEMOIZE``/``GET``, mixed in any order) and to
see calls whose target is not a named global. Where scanners that track only "the last two
strings" were bypassed (mmaitre314/picklescan#14, #22, #52; protectai/modelscan#85, #330, #331),
anything the walk cannot resolve is reported as unsafe rather than skipped. Opcodes and their
arguments come from ``formats.pickle.genops``, which reads them exactly as CPython's unpickler
does, so the walk stops exactly where a real load stops. An error ends the walk but keeps what was
read before it: the unpickler would already have run those opcodes (trailofbits/fickling#139).
"""

from __future__ import annotations

import copyreg
import pickletools
from dataclasses import dataclass, field
from typing import Any

from ckpttools.entries import GlobalRef
from ckpttools.formats.pickle.genops import OpcodeError, iter_ops
from ckpttools.formats.pickle.safety import classify_global, normalize_global

_STRINGS = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING",
                      "BINSTRING", "SHORT_BINSTRING"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXTS = frozenset({"EXT1", "EXT2", "EXT4"})


@dataclass(frozen=True)
class Finding:
    """Something unsafe or odd in a pickle that is not a plain global (a dynamic import, a call
    of a computed value, attributes set on a function)."""

    safety: str
    offset: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"safety": self.safety, "offset": self.offset, "message": self.message}


@dataclass(frozen=True)
class PickleScan:
    """What the opcode walk of one pickle found.

    Attributes:
        name: where the pickle is (``archive/data.pkl``, ``pickle 4`` of a legacy file).
        offset / end: byte range walked (end is just past STOP, or where the walk stopped).
        protocol: the PROTO opcode's value (0 when absent).
        opcodes: opcodes read.
        globals: every global, in order of first reference, classified.
        findings: dynamic imports, computed calls and other unsafe constructs.
        error: why the walk stopped early (empty when it reached STOP).
    """

    name: str
    offset: int
    end: int
    protocol: int
    opcodes: int
    globals: tuple[GlobalRef, ...]
    findings: tuple[Finding, ...] = ()
    error: str = ""

    @property
    def safety(self) -> str:
        levels = [g.safety for g in self.globals] + [f.safety for f in self.findings]
        for level in ("unsafe", "unknown"):
            if level in levels:
                return level
        return "safe"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "offset": self.offset, "end": self.end, "protocol": self.protocol,
            "opcodes": self.opcodes, "safety": self.safety, "error": self.error or None,
            "globals": [{"module": g.module, "name": g.name, "safety": g.safety,
                         "reason": g.reason} for g in self.globals],
            "findings": [f.to_dict() for f in self.findings],
        }


class _Global:
    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname


class _Computed:
    """A value made by a call or an opcode the walk does not model."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


class _Stop(ValueError):
    """Where the real unpickler would raise; nothing after it runs."""


_MARK = object()
_OTHER = _Computed("a value")


@dataclass
class _Walk:
    name: str
    stack: list[Any] = field(default_factory=list)
    memo: dict[int, Any] = field(default_factory=dict)
    globals: dict[tuple[str, str], GlobalRef] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    protocol: int = 0

    def pop(self) -> Any:
        if not self.stack:
            raise _Stop("stack underflow: the unpickler stops here")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        items: list[Any] = []
        while self.stack:
            value = self.stack.pop()
            if value is _MARK:
                items.reverse()
                return items
            items.append(value)
        raise _Stop("no MARK on the stack: the unpickler stops here")

    def add_global(self, module: str, name: str) -> _Global:
        module, name = normalize_global(module, name)
        if (module, name) not in self.globals:
            safety, reason = classify_global(module, name)
            self.globals[(module, name)] = GlobalRef(module, name, safety, self.name, reason)
        return _Global(f"{module}.{name}")

    def flag(self, pos: int, message: str, safety: str = "unsafe") -> None:
        self.findings.append(Finding(safety, pos, message))

    def call(self, callee: Any, pos: int, how: str) -> None:
        if not isinstance(callee, _Global):
            what = callee.what if isinstance(callee, _Computed) else type(callee).__name__
            self.flag(pos, f"{how} at offset {pos} calls {what}, not a named global "
                           "(a getattr/attrgetter-style chain)")

    def step(self, name: str, arg: Any, pos: int) -> None:
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, arg, pos)
        elif name in _STRINGS:
            self.stack.append(arg)
        elif name in _PUTS:
            self.memo[arg] = self.stack[-1] if self.stack else _OTHER
        elif name in _GETS:
            if arg not in self.memo:
                raise _Stop(f"memo index {arg} was never stored: the unpickler stops here")
            self.stack.append(self.memo[arg])
        elif name in _EXTS:
            self._ext(arg, pos)
        else:
            self._generic(*_EFFECTS[name])

    def _generic(self, marked: bool, pops: int, pushes: tuple[Any, ...]) -> None:
        if marked:
            self.pop_mark()
        stack = self.stack
        if pops > len(stack):
            raise _Stop("stack underflow: the unpickler stops here")
        if pops:
            del stack[-pops:]
        stack.extend(pushes)

    def _ext(self, code: int, pos: int) -> None:
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        where = f"extension code {code} at offset {pos}"
        if key is None:
            self.flag(pos, f"{where}: a global taken from the loader's copyreg extension "
                           "registry, not named in the file")
            self.stack.append(_Computed(f"the global of {where}"))
        else:
            self.flag(pos, f"{where} names {key[0]}.{key[1]} through the copyreg registry")
            self.stack.append(self.add_global(*key))


def _global(w: _Walk, arg: str, pos: int) -> None:
    module, _, name = arg.partition(" ")
    w.stack.append(w.add_global(module, name))


def _stack_global(w: _Walk, arg: Any, pos: int) -> None:
    name, module = w.pop(), w.pop()
    if isinstance(module, str) and isinstance(name, str):
        w.stack.append(w.add_global(module, name))
        return
    shown = [v if isinstance(v, str) else "?" for v in (module, name)]
    w.flag(pos, f"STACK_GLOBAL at offset {pos} imports a name computed at load time "
                f"({shown[0]}.{shown[1]}); a dynamic global")
    w.stack.append(_Computed(f"the dynamic global at offset {pos}"))


def _inst(w: _Walk, arg: str, pos: int) -> None:
    module, _, name = arg.partition(" ")
    w.pop_mark()
    w.add_global(module, name)
    w.stack.append(_Computed(f"the {module}.{name} object"))


def _obj(w: _Walk, arg: Any, pos: int) -> None:
    items = w.pop_mark()
    w.call(items[0] if items else _OTHER, pos, "OBJ")
    w.stack.append(_Computed(f"the object made at offset {pos}"))


def _reduce(w: _Walk, arg: Any, pos: int) -> None:
    w.pop()
    callee = w.pop()
    w.call(callee, pos, "REDUCE")
    name = callee.qualname if isinstance(callee, _Global) else "a computed value"
    w.stack.append(_Computed(f"the result of calling {name}"))


def _newobj(w: _Walk, arg: Any, pos: int) -> None:
    w.pop()
    w.call(w.pop(), pos, "NEWOBJ")
    w.stack.append(_Computed(f"the object made at offset {pos}"))


def _newobj_ex(w: _Walk, arg: Any, pos: int) -> None:
    w.pop()
    _newobj(w, arg, pos)


def _build(w: _Walk, arg: Any, pos: int) -> None:
    w.pop()
    target = w.stack[-1] if w.stack else _OTHER
    if isinstance(target, _Global):
        # modelscan#85: BUILD on a function or module sets its attributes, which a later
        # dotted global or STACK_GLOBAL then reads back
        w.flag(pos, f"BUILD at offset {pos} sets attributes on {target.qualname} itself")


def _dup(w: _Walk, arg: Any, pos: int) -> None:
    w.stack.append(w.stack[-1] if w.stack else _OTHER)


def _memoize(w: _Walk, arg: Any, pos: int) -> None:
    w.memo[len(w.memo)] = w.stack[-1] if w.stack else _OTHER


def _proto(w: _Walk, arg: int, pos: int) -> None:
    w.protocol = arg


_HANDLERS = {
    "GLOBAL": _global, "STACK_GLOBAL": _stack_global, "INST": _inst, "OBJ": _obj,
    "REDUCE": _reduce, "NEWOBJ": _newobj, "NEWOBJ_EX": _newobj_ex, "BUILD": _build,
    "DUP": _dup, "MEMOIZE": _memoize, "PROTO": _proto,
}


def _effect(op: pickletools.OpcodeInfo) -> tuple[bool, int, tuple[Any, ...]]:
    """``(pops a mark, values popped below it or in all, values pushed)`` of a plain opcode."""
    before = op.stack_before
    marked = pickletools.markobject in before
    pops = before.index(pickletools.markobject) if marked else len(before)
    return marked, pops, tuple(_MARK if item is pickletools.markobject else _OTHER
                               for item in op.stack_after)


_EFFECTS = {op.name: _effect(op) for op in pickletools.opcodes}


def scan_opcodes(data: Any, name: str, offset: int = 0, end: int | None = None) -> PickleScan:
    """Walk one pickle from ``offset`` of ``data`` up to its STOP.

    Args:
        data: ``bytes`` or an ``mmap`` of the file or record.
        name: how to name the pickle in the report.
        offset: where the pickle starts.
        end: where its bytes end (default: the end of ``data``).

    Returns:
        The globals and findings; ``error`` says why the walk stopped early, if it did (it
        stops exactly where CPython's unpickler would raise).
    """
    w = _Walk(name)
    limit = end
    count, end, error = 0, offset, ""
    try:
        for op, arg, pos in iter_ops(data, offset, limit):
            end = pos + 1
            w.step(op, arg, pos)
            count += 1
    except (_Stop, OpcodeError) as e:
        error = f"at offset {end - 1 if count else offset}, {e}"
    except RecursionError:  # never expected: the walk is iterative
        error = "pickle nests too deeply"
    return PickleScan(name, offset, end, w.protocol, count, tuple(w.globals.values()),
                      tuple(w.findings), error)
