"""One static walk of a pickle's opcodes: every global it would import, every call it would make,
and how deep its tuples nest, without importing or calling anything.

A small symbolic stack follows the pickle machine closely enough to resolve ``STACK_GLOBAL``
operands through the memo (``PUT``/``BINPUT``/``MEMOIZE``/``GET``, mixed in any order) and to
see calls whose target is not a named global. Where scanners that track only "the last two
strings" were bypassed (mmaitre314/picklescan#14, #22, #52; protectai/modelscan#85, #330, #331),
anything the walk cannot resolve is reported as unsafe rather than skipped. Arguments that can
be read more than one way go through ``genops``, which reads them exactly as CPython's unpickler
does, so the walk stops exactly where a real load stops; an error ends the walk but keeps what
was read before it (the unpickler would already have run those opcodes, trailofbits/fickling#139).

Tuples are tracked by nesting depth on the same stack (hashing a tuple recurses in C without a
limit) and container keys by hash (distinct keys of one hash make hashing quadratic), so one
pass answers the safety, the crash and the time question (``opstate`` holds the machine). The walk is one loop over
integer opcode codes with table lookups: a checkpoint's pickle holds about 30 opcodes per
tensor, and a call per opcode would cost more than the opcode.
"""

from __future__ import annotations

import mmap
import pickletools
import struct
from dataclasses import dataclass
from typing import Any

from ckpttools.entries import GlobalRef
from ckpttools.formats.pickle.genops import NAMES, OpcodeError, TruncatedError, read_arg
from ckpttools.formats.pickle.opstate import (EQUAL_HASH_LIMIT, HANDLERS, MARK, OTHER, State,
                                              Stop, Tup, count_keys)
from ckpttools.formats.pickle.guard import note_walk
from ckpttools.formats.pickle.record_runs import RunValues, record_run
from ckpttools.formats.pickle.records import tensor_record

__all__ = ["CHEAP_TUPLE_LIMIT", "MAX_TUPLE_DEPTH", "OpWalk", "fails_early", "max_tuple_depth",
           "pickle_hazard", "remember_walk", "walk_ops"]


@dataclass(frozen=True)
class OpWalk:
    """What one walk found.

    Attributes:
        end: just past STOP, or just past the last opcode read when the walk stopped early.
        opcodes: opcodes read.
        protocol: the PROTO opcode's value (0 when absent).
        globals: every global, in order of first reference, classified.
        findings: ``(safety, offset, message)`` of dynamic imports, computed calls and the like.
        error: why the walk stopped early (empty when it reached STOP).
        malformed: the stop was a malformed opcode or argument (not a stack or memo error).
        tuple_depth: how deep tuples nest in what was read.
        hostile: why building what was read takes time quadratic in its size (colliding keys).
    """

    end: int
    opcodes: int
    protocol: int
    globals: tuple[GlobalRef, ...]
    findings: tuple[tuple[str, int, str], ...]
    error: str
    malformed: bool
    tuple_depth: int
    hostile: str = ""


# ---- per-code tables ---------------------------------------------------------------------------

_SLOW, _INVALID = -1, -2  # argument read by genops._arg; not an opcode
# fixed-width arguments that need no check beyond their length (genops reads them the same way)
_PLAIN_WIDTH = {"BININT": 4, "BININT1": 1, "BININT2": 2, "BINGET": 1, "LONG_BINGET": 4,
                "BINPUT": 1, "LONG_BINPUT": 4, "BINFLOAT": 8}
(_K_EFFECT, _K_PUSH, _K_STRING, _K_PUT, _K_GET, _K_TUPLE, _K_TUPLE_N, _K_HANDLER, _K_STOP,
 _K_VALUE) = range(10)
_VALUES = frozenset({"INT", "LONG", "LONG1", "LONG4", "BININT", "BININT1", "BININT2", "BINFLOAT"})
_STRINGS = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING",
                      "BINSTRING", "SHORT_BINSTRING"})


def _effect(op: pickletools.OpcodeInfo) -> tuple[bool, int, tuple[Any, ...]]:
    """``(pops a mark, values popped below it or in all, values pushed)`` of a plain opcode."""
    before = op.stack_before
    marked = pickletools.markobject in before
    pops = before.index(pickletools.markobject) if marked else len(before)
    return marked, pops, tuple(MARK if item is pickletools.markobject else OTHER
                               for item in op.stack_after)


def _kind(name: str, effect: tuple[bool, int, tuple[Any, ...]]) -> int:
    if name == "STOP":
        return _K_STOP
    if name in HANDLERS:
        return _K_HANDLER
    if name in _STRINGS:
        return _K_STRING
    if name in _VALUES:
        return _K_VALUE
    if name in ("PUT", "BINPUT", "LONG_BINPUT"):
        return _K_PUT
    if name in ("GET", "BINGET", "LONG_BINGET"):
        return _K_GET
    if name == "TUPLE":
        return _K_TUPLE
    if name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        return _K_TUPLE_N
    marked, pops, pushes = effect
    return _K_PUSH if not marked and not pops and len(pushes) == 1 else _K_EFFECT


_WIDTH = [_INVALID] * 256
_KIND = [_K_EFFECT] * 256
_EFFECT: list[Any] = [None] * 256
_PUSHED: list[Any] = [None] * 256
_TUPLE_N = [0] * 256
for _code, _name in NAMES.items():
    _op = pickletools.code2op[chr(_code)]
    _WIDTH[_code] = 0 if _op.arg is None else _PLAIN_WIDTH.get(_name, _SLOW)
    _EFFECT[_code] = _effect(_op)
    _KIND[_code] = _kind(_name, _EFFECT[_code])
    _PUSHED[_code] = _EFFECT[_code][2][0] if _EFFECT[_code][2] else None
    _TUPLE_N[_code] = int(_name[-1]) if _name in ("TUPLE1", "TUPLE2", "TUPLE3") else 0
_HANDLER_AT = [HANDLERS.get(NAMES.get(c, "")) for c in range(256)]


def _depth_of(items: list[Any]) -> int:
    depth = 1
    for v in items:
        if type(v) is Tup and v.depth >= depth:
            depth = v.depth + 1
    return depth


_BINFLOAT = ord("G")
_BINUNICODE, _SHORT_BINUNICODE = ord("X"), 0x8C
_BINPUT, _LONG_BINPUT = ord("q"), ord("r")
_DOUBLE = struct.Struct(">d")


def _value(data: Any, c: int, pos: int, k: int, arg: Any) -> Any:
    """The number an integer or float opcode pushes (keys are hashed by value)."""
    if k == 1:
        return data[pos + 1]
    if k == 2:
        return int.from_bytes(data[pos + 1:pos + 3], "little")
    if k == 4:
        return int.from_bytes(data[pos + 1:pos + 5], "little", signed=True)
    if c == _BINFLOAT:
        return _DOUBLE.unpack(data[pos + 1:pos + 9])[0]
    return OTHER if arg is None else arg  # INT, LONG, LONG1, LONG4: read by genops


_PROBE_OPS = 256  # tensor bytes read as opcodes fail within a few; a pickle runs longer
_COPY_LIMIT = 256 << 20  # a pickle this size is walked from a copy (bytes index 2x faster than mmap)


class _Probed(Exception):
    """The probe on a mapped file read ``_PROBE_OPS`` opcodes: walk a copy instead."""


def walk_ops(data: Any, name: str, offset: int = 0, end: int | None = None) -> OpWalk:
    """Walk one pickle from ``offset`` of ``data`` up to its STOP.

    Args:
        data: ``bytes`` or an ``mmap`` of the file or record (anything with ``find``).
        name: how to name the pickle in ``GlobalRef.pickle``.
        offset: where the pickle starts.
        end: where its bytes end (default: the end of ``data``).

    Returns:
        Globals, findings, tuple depth; ``error`` says why the walk stopped early, if it did
        (exactly where CPython's unpickler would raise). Offsets are those of ``data``.
    """
    n = len(data) if end is None else end
    if type(data) is bytes or n - offset > _COPY_LIMIT:
        return _walk(data, name, offset, n, 0, None)
    try:
        return _walk(data, name, offset, n, 0, _PROBE_OPS)
    except _Probed:
        return _walk(bytes(data[offset:n]), name, 0, n - offset, offset, None)


def _walk(data: Any, name: str, offset: int, n: int, base: int, budget: int | None) -> OpWalk:
    """The walk of ``data[offset:n]``, reporting offsets plus ``base``."""
    w = State(name)
    count, last, deepest, error, malformed = 0, offset, 0, "", False
    try:
        deepest, count, last = _loop(w, data, offset, n, base, budget)
    except Stop as e:
        count, last, deepest, error = *e.args[1:], str(e.args[0])
    except OpcodeError as e:
        count, last, deepest, error, malformed = *e.args[1:], str(e.args[0]), True
    except RecursionError:  # never expected: the walk is iterative
        error = "pickle nests too deeply"
    if error:
        error = f"at offset {base + (last - 1 if count else offset)}, {error}"
    else:
        note_walk(w, data, offset, last)
    return OpWalk(base + last, count, w.protocol, tuple(w.globals.values()), tuple(w.findings),
                  error, malformed, deepest, w.hostile)


_FRAME, _NO_FRAME = 0x95, 1 << 62
FUSED_RECORDS = True  # torch's plain tensor record in one step (``records``); tests compare both
_BUFFERS = (bytes, mmap.mmap)


def _cross_frame(w: State, pos: int) -> None:
    """An opcode whose argument runs past the end of its frame. CPython's C unpickler reading
    a file (``torch.load`` hands it a ``BytesIO``) drops the frame's remaining bytes and reads
    the argument from after the frame; reading bytes it does not, and pickle's Python reader
    refuses: readers disagree on what the pickle holds, so no reading of it can be trusted."""
    w.hostile = (f"the opcode at offset {pos} reads past the end of its frame: unpicklers "
                 "disagree on what follows (one reading can hide a global)")
    w.flag(pos, w.hostile)
    raise Stop(w.hostile)


def _read_framed(w: State, data: Any, c: int, pos: int, n: int, frame_end: int,
                 base: int) -> tuple[Any, int]:
    """``read_arg`` within the current frame: an argument cut by the frame's end (a line without
    its newline, a count past it) is one that readers read differently."""
    if pos >= frame_end or frame_end >= n:
        return read_arg(data, NAMES[c], pos + 1, n)
    try:
        return read_arg(data, NAMES[c], pos + 1, frame_end)
    except TruncatedError:
        _cross_frame(w, base + pos)
        raise


def _loop(w: State, data: Any, pos: int, n: int, base: int,
          budget: int | None) -> tuple[int, int, int]:
    """The walk proper: ``(tuple depth, opcodes, end)``. Raises ``Stop``/``OpcodeError`` with
    ``(message, opcodes, end, depth)`` as arguments, so the caller keeps what was read."""
    stack, memo = w.stack, w.memo
    width_at, kind_at, pushed_at = _WIDTH, _KIND, _PUSHED
    count = deepest = 0
    last = pos
    frame_end = _NO_FRAME
    limit = budget if budget is not None else 1 << 62
    records = FUSED_RECORDS and type(data) in _BUFFERS  # a pattern reads bytes, not a URL's view
    try:
        while True:
            if pos >= n:
                raise OpcodeError("pickle data was truncated (no STOP opcode)")
            if count >= limit:
                raise _Probed()
            c = data[pos]
            if c == _BINUNICODE and records:  # a tensor's key: its record in one step
                rec = record_run(w, data, pos, n if n < frame_end else frame_end) or \
                    tensor_record(w, data, pos, n if n < frame_end else frame_end)
                if rec is not None:
                    pos, ops, d, last = rec
                    count += ops
                    deepest = d if d > deepest else deepest
                    continue
            k = width_at[c]
            if k >= 0:
                nxt = pos + 1 + k
                if nxt > n:
                    raise OpcodeError("pickle data was truncated")
                arg: Any = None
            elif c == _BINUNICODE or c == _SHORT_BINUNICODE:  # two per tensor: no call
                start = pos + (5 if c == _BINUNICODE else 2)  # past the 4- or 1-byte count
                if start > n:
                    raise OpcodeError("pickle data was truncated")
                nxt = start + int.from_bytes(data[pos + 1:start], "little")
                if nxt > n:
                    raise OpcodeError("pickle data was truncated")
                if nxt > frame_end and pos < frame_end:
                    _cross_frame(w, base + pos)
                try:
                    arg = str(data[start:nxt], "utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    raise OpcodeError(f"{NAMES[c]} is not UTF-8") from None
            elif k == _SLOW:
                arg, nxt = _read_framed(w, data, c, pos, n, frame_end, base)
            else:
                raise OpcodeError(f"invalid load key, {bytes([c])!r}")
            last = pos + 1
            if nxt > frame_end:
                if pos < frame_end:
                    _cross_frame(w, base + pos)
                frame_end = _NO_FRAME
            kind = kind_at[c]
            # most frequent first: a torch pickle memoizes every value and fetches many
            if kind == _K_PUT or kind == _K_GET:
                if k == 1:
                    arg = data[pos + 1]
                elif k == 4:
                    arg = int.from_bytes(data[pos + 1:nxt], "little")
                elif kind == _K_PUT:
                    w.text_put = True
                if kind == _K_PUT:
                    memo[arg] = stack[-1] if stack else OTHER
                elif arg in memo:
                    v = memo[arg]
                    stack.append(v if type(v) is not RunValues else v.value(arg, memo))
                else:
                    raise Stop(f"memo index {arg} was never stored: the unpickler stops here")
            elif kind == _K_VALUE:
                stack.append(data[pos + 1] if k == 1 else _value(data, c, pos, k, arg))
            elif kind == _K_PUSH:
                stack.append(pushed_at[c])
            elif kind == _K_STRING:
                stack.append(arg)
            elif kind == _K_TUPLE_N:
                t = _TUPLE_N[c]
                if t > len(stack):
                    raise Stop("stack underflow: the unpickler stops here")
                items = stack[-t:]
                del stack[-t:]
                d = _depth_of(items)
                stack.append(Tup(d, items[0]))
                deepest = d if d > deepest else deepest
            elif kind == _K_TUPLE:
                items = w.pop_mark()
                d = _depth_of(items)
                if len(items) > EQUAL_HASH_LIMIT:  # set(tuple_of_keys) hashes them
                    count_keys(w, items, items, base + pos, keys=False)
                stack.append(Tup(d, items[0] if items else None))
                deepest = d if d > deepest else deepest
            elif kind == _K_HANDLER:
                _HANDLER_AT[c](w, arg, base + pos)
            elif kind == _K_STOP:
                if not stack:
                    raise Stop("stack underflow: the unpickler stops here")
                return deepest, count + 1, last
            else:
                if c == _FRAME:
                    frame_end = nxt + int.from_bytes(data[pos + 1:nxt], "little")
                    w.frames_end = max(w.frames_end, frame_end)
                marked, pops, pushes = _EFFECT[c]
                if marked:
                    w.pop_mark()
                if pops > len(stack):
                    raise Stop("stack underflow: the unpickler stops here")
                if pops:
                    del stack[-pops:]
                stack.extend(pushes)
            count += 1
            pos = nxt
            # a torch pickle memoizes every value it pushes: the put that follows is done
            # here, without a turn of the loop (a put at the end of the data is left to it)
            if pos + 5 <= n:
                c = data[pos]
                if c == _BINPUT:
                    nxt = pos + 2
                elif c == _LONG_BINPUT:
                    nxt = pos + 5
                else:
                    continue
                if nxt > frame_end:
                    if pos < frame_end:
                        _cross_frame(w, base + pos)
                    frame_end = _NO_FRAME
                memo[data[pos + 1] if c == _BINPUT else int.from_bytes(data[pos + 1:nxt], "little")] \
                    = stack[-1] if stack else OTHER
                last = pos + 1
                count += 1
                pos = nxt
    except (Stop, OpcodeError) as e:
        raise type(e)(e.args[0], count, last, deepest) from None


def fails_early(data: Any, pos: int, end: int, ops: int = 8) -> bool:
    """Whether reading opcodes from ``pos`` fails within ``ops`` opcodes, before any STOP (an
    invalid opcode or a truncated argument): then ``walk_ops`` stops there too, so the bytes
    are no pickle. Tensor records fail this way within a few opcodes, at a fraction of a walk.
    """
    for _ in range(ops):
        if pos >= end:
            return True
        c = data[pos]
        k = _WIDTH[c]
        if k == _INVALID:
            return True
        if c == _STOP_CODE:
            return False
        if k >= 0:
            pos += 1 + k
            if pos > end:
                return True
            continue
        try:
            pos = read_arg(data, NAMES[c], pos + 1, end)[1]
        except OpcodeError:
            return True
    return False


_STOP_CODE = ord(".")


# ---- the reader's questions: tuple depth, colliding keys --------------------------------------

_TUPLE_OPS = (b"t", b"\x85", b"\x86", b"\x87")
CHEAP_TUPLE_LIMIT = 50_000  # below this many tuple opcodes, no tuple can nest deep enough to crash
MAX_TUPLE_DEPTH = 50_000  # hashing a tuple recurses in C with no limit: deeper crashes loaders
_CHEAP_BYTES = 2 * EQUAL_HASH_LIMIT  # a pickle this short cannot pass any limit
_LAST: dict[tuple[int, bytes], tuple[int, str]] = {}


def max_tuple_depth(data: Any, pos: int = 0) -> int:
    """How deep tuples nest in a pickle (hashing a tuple recurses in C without a limit, so a
    key nested ~10**6 deep crashes the interpreter). Cheap unless the pickle has more than
    ``CHEAP_TUPLE_LIMIT`` tuple opcodes.

    Raises:
        OpcodeError: the pickle is malformed.
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    if sum(raw.count(op, pos) for op in _TUPLE_OPS) < CHEAP_TUPLE_LIMIT:
        return 0
    return _summary(raw, pos)[0]


def pickle_hazard(data: Any, pos: int = 0) -> str:
    """Why unpickling the pickle in ``data`` would crash the interpreter (tuples nested past
    ``MAX_TUPLE_DEPTH``) or take time quadratic in its size (many keys of one hash in one dict);
    empty when neither.

    Raises:
        OpcodeError: the pickle is malformed.
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    if len(raw) - pos < _CHEAP_BYTES:
        return ""
    depth, hostile = _summary(raw, pos)
    if depth > MAX_TUPLE_DEPTH:
        return f"tuples nest {depth} deep; unpickling it would crash the interpreter"
    return hostile


def _summary(raw: bytes, pos: int) -> tuple[int, str]:
    # the scan and then the reader ask about the same pickle (inspect does both): walk it once;
    # keyed by the bytes themselves, as a checksum could be made to collide
    if (pos, raw) not in _LAST:
        walk = walk_ops(raw, "", pos)
        if walk.malformed:
            raise OpcodeError(walk.error)
        remember_walk(raw, walk.tuple_depth, walk.hostile, pos)
    return _LAST[(pos, raw)]


def remember_walk(raw: bytes, tuple_depth: int, hostile: str, pos: int = 0) -> None:
    """Record what a walk of the whole pickle ``raw[pos:]`` found, so that the next question
    about the same bytes does not walk them again."""
    _LAST.clear()
    _LAST[(pos, raw)] = (tuple_depth, hostile)
