"""Runs of torch's tensor records, walked a run at a time.

``records.tensor_record`` walks one plain record in one step (about 8 us of Python each, most
of a 20,000-tensor walk). Past the 32nd record ``torch.save`` writes every record alike: the
same five fetches of the globals and strings the first record stored, then eight
``LONG_BINPUT`` memo indices numbered on from the last. Here the records of such a run are
matched one after another (the same compiled pattern, per-record work cut to the pattern
and a few comparisons), and what the loop checks once per opcode is checked once per run:
the fetched values (the run's records fetch the same indices, which no record of it stores),
the memo indices (one comparison of all of them against the consecutive numbers, none stored
before) and the stack and memo writes (done in bulk). A record that differs in any way ends the
run, and is left to ``tensor_record`` or the loop.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from typing import Any

from ckpttools.formats.pickle.opcode_patterns import INT_OP, INT_TUPLE, LONG_PUT, MEMO_GET
from ckpttools.formats.pickle.opstate import OTHER, Computed, Global, State, Tup
from ckpttools.formats.pickle.records import called_text, tuple_ops

__all__ = ["MIN_RUN", "RunValues", "record_run", "resolve"]

_LPUT, _GET, _INT = LONG_PUT, MEMO_GET, INT_OP
_SHAPE = INT_TUPLE + LONG_PUT  # a non-empty shape or stride (an EMPTY_TUPLE ends the run)


def _rest(rebuild: bytes, storage: bytes, storage_class: bytes, device: bytes,
          hooks: bytes) -> bytes:
    """The record after its key's BINUNICODE, as in ``records._REST`` with every put a
    LONG_BINPUT, its five fetches read by the patterns given."""
    return (_LPUT + rebuild + rb"\(\(" + storage + storage_class    # key put; rebuild; 'storage', class
            + rb"X([\x01-\x14])\x00\x00\x00([0-9]+)" + _LPUT      # storage key (length checked below)
            + device + rb"(" + _INT + rb")t" + _LPUT              # device, numel, TUPLE
            + rb"Q(" + _INT + rb")" + _SHAPE + _SHAPE             # BINPERSID, offset, shape, stride
            + rb"([\x88\x89])" + hooks + rb"\)R" + _LPUT          # requires_grad, OrderedDict()
            + rb"t" + _LPUT + rb"R" + _LPUT)                      # the arguments, the rebuild call


_REST = re.compile(_rest(_GET, _GET, _GET, _GET, _GET))
_SAME: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}  # the five fetches -> _REST with them


def _same_fetches(gets: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """``_REST`` for the records that fetch exactly ``gets`` (the first record's): each fetch
    a literal, captured as a group of the same number, so the matches read as ``_REST``'s. A
    record that fetches anything else does not match it (``_scan`` compared the five per
    record before, 20,000 records). Made once per distinct five (one for a ``torch.save``
    file), at most 64 kept."""
    pattern = _SAME.get(gets)
    if pattern is None:
        pattern = re.compile(_rest(*(b"(" + re.escape(g) + b")" for g in gets)))
        if len(_SAME) < 64:
            _SAME[gets] = pattern
    return pattern


_BINUNICODE = 0x58
_PUTS = 8  # memo indices each record stores
MIN_RUN = 2  # fewer records are left to ``tensor_record``
_MAX_RUN = 4096  # records matched before the run is checked and applied


def _fetched(w: State, gets: tuple[bytes, ...]) -> tuple[str, str] | None:
    """What the run's calls are named, if its five fetches read the values a plain record
    needs (else None): the rebuild, storage class and OrderedDict globals, two strings."""
    at = [int.from_bytes(op[1:], "little") for op in gets]
    rebuild, storage, storage_class, device, hooks = (w.memo.get(i) for i in at)
    if not (type(rebuild) is Global and type(storage_class) is Global
            and type(hooks) is Global and type(storage) is str and type(device) is str):
        return None
    return called_text(hooks.qualname), called_text(rebuild.qualname)


class RunValues:
    """The memo values of a run's records, made when a later opcode fetches one.

    The memo holds the run itself at the indices whose values are not made yet (each record's
    key and result are stored as they are); ``value`` makes the record's values, as
    ``tensor_record`` would have stored them, and stores them at those indices that still
    hold the run (a later PUT may have replaced one)."""

    __slots__ = ("first", "found", "hooks_text")

    def __init__(self, first: int, found: list[Any], hooks_text: str) -> None:
        self.first = first
        self.found = found
        self.hooks_text = hooks_text

    def value(self, index: int, memo: dict[int, Any]) -> Any:
        """The value at ``index`` (which holds this run), stored in ``memo``."""
        record, _ = divmod(index - self.first, _PUTS)
        m = self.found[record]
        shape, _ = tuple_ops(m.group(12))
        stride, _ = tuple_ops(m.group(14))
        values = (m.group(6).decode("ascii"), Tup(1), Tup(1, shape), Tup(1, stride),
                  Computed(self.hooks_text), Tup(2, OTHER))
        base = self.first + record * _PUTS + 1  # the key's index is before them
        for at, v in enumerate(values, base):
            if memo.get(at) is self:
                memo[at] = v
        return memo[index]


def resolve(memo: dict[int, Any], index: int) -> Any:
    """``memo[index]``, made first when a run left it to be made."""
    v = memo[index]
    return v.value(index, memo) if type(v) is RunValues else v


_PAIRS: dict[tuple[bytes, bytes], int] = {}  # (shape, stride) opcodes -> the record's opcodes


def _pair_ops(shape: bytes, stride: bytes) -> int:
    ops = 24 + tuple_ops(shape)[1] + tuple_ops(stride)[1]
    if len(_PAIRS) < 4096:
        _PAIRS[(shape, stride)] = ops
    return ops


def _scan(data: Any, pos: int, end: int) -> tuple[list[Any], list[str], list[bytes], int]:
    """The records of the run at ``pos``: their matches, keys, memo indices and opcodes (at
    most ``_MAX_RUN``); the run ends at the first record whose form, fetches or key differ."""
    match, fb, pairs, join = _REST.match, int.from_bytes, _PAIRS, b"".join
    found: list[Any] = []
    keys: list[str] = []
    puts: list[bytes] = []
    ops = 0
    while pos < end and data[pos] == _BINUNICODE and len(found) < _MAX_RUN:
        start = pos + 5 + fb(data[pos + 1:pos + 5], "little")
        m = match(data, start, end) if start < end else None
        if m is None:
            break
        g = m.groups()
        if not found:  # the records after it must fetch what it fetches: matched as literals
            match = _same_fetches((g[1], g[2], g[3], g[7], g[16])).match
        if len(g[5]) != g[4][0]:  # the storage key's digits run as long as its count says
            break
        try:
            keys.append(str(data[pos + 5:start], "utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            break  # the loop raises exactly where the unpickler does
        found.append(m)
        puts.append(join((g[0], g[6], g[9], g[12], g[14], g[17], g[18], g[19])))
        ops += pairs.get((g[11], g[13])) or _pair_ops(g[11], g[13])
        pos = m.end()
    return found, keys, puts, ops


def _numbered(w: State, first: int, puts: list[bytes]) -> int:
    """How many of the records store exactly the memo indices that follow ``first`` (the first
    record's first), none stored before (as ``torch.save`` numbers them)."""
    count = len(puts)
    want = array("I", range(first, first + count * _PUTS))
    if want.itemsize != 4 or sys.byteorder != "little":
        want = array("I")  # the comparison below then takes each record on its own
    if b"".join(puts) != want.tobytes():
        count = next((i for i, p in enumerate(puts)
                      if p != struct.pack("<8I", *range(first + i * _PUTS,
                                                        first + (i + 1) * _PUTS))), count)
    memo = w.memo
    if not memo.keys().isdisjoint(range(first, first + count * _PUTS)):
        count = next(i for i in range(count)
                     if not memo.keys().isdisjoint(range(first + i * _PUTS,
                                                         first + (i + 1) * _PUTS)))
    return count


def record_run(w: State, data: Any, pos: int, end: int) -> tuple[int, int, int, int] | None:
    """Walk the run of plain long-form tensor records at ``pos``, if there is one.

    Args:
        w: the walk's machine; its stack gets each key and rebuilt tensor, its memo each
            record's values (made when fetched, ``RunValues``), as the opcode loop would.
        data: the pickle's bytes (or a map).
        pos: offset of the first record's BINUNICODE.
        end: where the run must end (the data's end, or the current frame's).

    Returns:
        ``(next offset, opcodes, tuple depth, just past the last opcode's code)``, or None
        when fewer than ``MIN_RUN`` records start there (then nothing was changed).
    """
    found, keys, puts, ops = _scan(data, pos, end)
    if len(found) < MIN_RUN:
        return None
    g = found[0].groups()
    gets = (g[1], g[2], g[3], g[7], g[16])
    names = _fetched(w, gets)
    first = int.from_bytes(g[0], "little")
    count = _numbered(w, first, puts) if names is not None else 0
    if count < MIN_RUN:
        return None
    if count < len(found):
        del found[count:], keys[count:]
        ops = sum(_pair_ops(m.group(12), m.group(14)) for m in found)
    hooks_text, called = names  # type: ignore[misc]
    results = [Computed(called) for _ in range(count)]
    values: list[Any] = [RunValues(first, found, hooks_text)] * (count * _PUTS)
    values[::_PUTS], values[_PUTS - 1::_PUTS] = keys, results
    w.memo.update(zip(range(first, first + count * _PUTS), values))
    pairs: list[Any] = [None] * (2 * count)
    pairs[::2], pairs[1::2] = keys, results
    w.stack += pairs
    after = found[-1].end()
    w.runs.append((pos, after, first, gets, found, keys))  # for ``plain_state``, via ``guard``
    return after, ops, 2, after - 4
