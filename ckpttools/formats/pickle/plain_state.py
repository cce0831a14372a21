"""A ``torch.save`` of a dict of tensors, read from the scan's runs instead of unpickled again.

``torch.save(state_dict)`` (protocol 2) writes an empty dict, or ``OrderedDict()`` for a
module's ``state_dict()``, then batches of ``MARK (key, tensor record)... SETITEMS``, then (for
the OrderedDict) its ``_metadata`` as BUILD state, then STOP. ``inspect`` walks that pickle
twice: the scan's safety walk, then the reader's C unpickler with its stand-ins (one
``persistent_load`` and one rebuild call in Python per tensor; 0.08 s for 20,000 tensors). The
scan's walk already matched every record past the 32nd a run at a time (``record_runs``) and
keeps the matches of the bytes it proved (``guard.proven_runs``); here those matches become
the storage and tensor records the stand-ins would make (``WalkContext.torch_persistent_load``,
``stand_ins._tensor``), and the few records before the runs, the header and the metadata are
matched by patterns whose alternatives read every opcode at its true width, each memo store and
fetch followed in the pickle's order. The result is the unpickler's: the same tree (its kind,
keys in order, ``_metadata``), globals (in order of first use, classified by
``WalkContext.resolve_global``), storages and end.

Only that exact form is taken: protocol 2, no frames, every global one of
``torch._utils._rebuild_tensor_v2``, ``torch.<Name>Storage`` or ``collections.OrderedDict``,
every fetch reading a string or one of those globals this reader stored, no negative offset or
numel, ``{'version': int}`` metadata. Anything else (or a pickle the scan did not walk, or took
no run of) returns None and the unpickler reads it as before: the safety walk and the reader's
pre-checks still run first, so no verdict or refusal changes.
``tests/formats/pickle/test_plain_state.py`` holds both readings equal on real files, on byte
mutations and, for ``scan`` and ``inspect``, on every file of both hostile corpora.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from ckpttools.formats.pickle.guard import proven_runs
from ckpttools.formats.pickle.opcode_patterns import INT_OP, INT_VALUE, MEMO_GET, MEMO_PUT, SHAPE
from ckpttools.formats.pickle.placeholders import (STORAGE_DTYPES, StorageInfo, new_placeholder,
                                                   new_storage_info)
from ckpttools.formats.pickle.stand_ins import WalkContext

__all__ = ["read_plain_state"]

_PUT, _GET, _INT, _INTS, _TUPLE = MEMO_PUT, MEMO_GET, INT_VALUE, INT_OP, SHAPE
# a tensor record after its key's BINUNICODE (as torch.save writes it, globals named or fetched)
_RECORD = re.compile(
    _PUT                                                            # 1 key put
    + rb"(?:ctorch\._utils\n_rebuild_tensor_v2\n" + _PUT + rb"|" + _GET + rb")"   # 2 3
    + rb"\(\((?:X\x07\x00\x00\x00storage" + _PUT + rb"|" + _GET + rb")"          # 4 5
    + rb"(?:ctorch\n([A-Za-z0-9]{1,40})\n" + _PUT + rb"|" + _GET + rb")"         # 6 7 8
    + rb"(?:X([\x01-\x14])\x00\x00\x00([0-9]+)" + _PUT + rb"|" + _GET + rb")"  # 9-11, 12: key
    + rb"(?:X([\x01-\x20])\x00\x00\x00([a-z0-9:]+)" + _PUT + rb"|" + _GET + rb")"  # 13-16
    + _INT + rb"t" + _PUT + rb"Q" + _INT                            # 17 numel 18 19 offset
    + _TUPLE + _TUPLE                                               # 20-22, 23-25
    + rb"([\x88\x89])"                                              # 26 requires_grad
    + rb"(?:ccollections\nOrderedDict\n" + _PUT + rb"|" + _GET + rb")"           # 27 28
    + rb"\)R" + _PUT + rb"t" + _PUT + rb"R" + _PUT)                 # 29 30 31
_HEADER = re.compile(rb"\x80\x02(?:\}" + _PUT + rb"|ccollections\nOrderedDict\n" + _PUT + rb"\)R"
                     + _PUT + rb")")
# a state_dict's BUILD state up to its _metadata's OrderedDict(), and one _metadata entry after
# its name: ``{'version': int}`` SETITEM
_STATE = re.compile(rb"\}" + _PUT + rb"X\t\x00\x00\x00_metadata" + _PUT
                    + rb"(?:ccollections\nOrderedDict\n" + _PUT + rb"|" + _GET + rb")\)R" + _PUT)
_ENTRY = re.compile(_PUT + rb"\}" + _PUT + rb"(?:X\x07\x00\x00\x00version" + _PUT + rb"|" + _GET
                    + rb")" + _INT + rb"s")
_BINUNICODE, _MARK, _SETITEMS, _SETITEM = 0x58, 0x28, 0x75, 0x73
MAX_ALONE = 256  # records outside the scan's runs read here; past it the unpickler is faster
_OTHER = object()  # a memo value no record may fetch (a tuple, a call's result, the dict)
_REBUILD = ("torch._utils", "_rebuild_tensor_v2")
_HOOKS = ("collections", "OrderedDict")


class _Refused(Exception):
    """The bytes are not the plain form; the unpickler reads them."""


def _index(op: bytes) -> int:
    return int.from_bytes(op[1:], "little")


def _int(op: bytes) -> int:
    return int.from_bytes(op[1:], "little", signed=op[:1] == b"J")


_INT_VALUES: dict[bytes, int] = {}  # an int opcode's bytes -> its value


def _int_value(op: bytes) -> int:
    value = _int(op)
    if len(_INT_VALUES) < 65536:
        _INT_VALUES[op] = value
    return value


_TUPLES: dict[bytes, tuple[int, ...]] = {}


def _ints(body: bytes) -> tuple[int, ...]:
    """The ints of a matched shape or stride (its int opcodes and tuple opcode)."""
    known = _TUPLES.get(body)
    if known is not None:
        return known
    at, values = (1 if body[0] == _MARK else 0), []
    while body[at] in (0x4B, 0x4D, 0x4A):
        width = {0x4B: 1, 0x4D: 2, 0x4A: 4}[body[at]]
        values.append(int.from_bytes(body[at + 1:at + 1 + width], "little",
                                     signed=width == 4))
        at += 1 + width
    out = tuple(values)
    if len(_TUPLES) < 4096:
        _TUPLES[body] = out
    return out


_PAIRS: dict[tuple[bytes, bytes], tuple[Any, Any, bool]] = {}


def _pair(shape: bytes, stride: bytes) -> tuple[Any, Any, bool]:
    """``(shape, stride, whether their lengths differ)`` of a record's shape and stride."""
    out = (_ints(shape), _ints(stride), len(_ints(shape)) != len(_ints(stride)))
    if len(_PAIRS) < 4096:
        _PAIRS[(shape, stride)] = out
    return out


class _Reader:
    """The memo and context of one plain-state read."""

    def __init__(self, name: str) -> None:
        self.ctx = WalkContext(name)
        # the strings and globals stored, by index; a fetch of any other index is refused (a
        # tuple or a call's result as a callee or a name: the unpickler reads it)
        self.memo: dict[int, Any] = {}
        self.top = 0  # past every index stored so far
        self.tree: dict[str, Any] = {}

    def put(self, op: bytes, value: Any) -> None:
        """What a PUT stores: the value, or (for anything else) nothing a fetch may read."""
        index = _index(op)
        if value is _OTHER:
            self.memo.pop(index, None)
        else:
            self.memo[index] = value
        self.top = max(self.top, index + 1)

    def run(self, run: tuple[Any, ...]) -> int:
        """Take a run of records the scan's walk matched (``record_runs``): same form, same
        five fetches, eight consecutive LONG_BINPUT indices each from ``first``; returns the
        offset after it (from the pickle's start)."""
        _, after, first, gets, found, keys = run
        if first != self.top:
            raise _Refused  # an index stored before would be overwritten: the loop's case
        indices = [_index(op) for op in gets]
        rebuild, storage, storage_class, device, hooks = (
            self.memo.get(i, _OTHER) for i in indices)
        if (max(indices) >= first or rebuild != _REBUILD or storage != "storage"
                or hooks != _HOOKS or type(storage_class) is not tuple
                or storage_class[0] != "torch" or storage_class[1] not in STORAGE_DTYPES
                or type(device) is not str):
            raise _Refused
        dtype, count = STORAGE_DTYPES[storage_class[1]], len(keys)
        groups = [m.group(6, 9, 11, 12, 14, 16) for m in found]  # see ``record_runs._REST``
        storage_keys = [str(g[0], "ascii") for g in groups]
        self.memo.update(zip(range(first, first + 8 * count, 8), keys))
        self.memo.update(zip(range(first + 1, first + 8 * count, 8), storage_keys))
        self.top = first + 8 * count
        ints, pairs, storages, tree = _INT_VALUES, _PAIRS, self.ctx.storages, self.tree
        new_storage, new_tensor = new_storage_info, new_placeholder
        for key, storage_key, g in zip(keys, storage_keys, groups):
            numel = ints.get(g[1]) if g[1] in ints else _int_value(g[1])
            offset = ints.get(g[2]) if g[2] in ints else _int_value(g[2])
            pair = pairs.get((g[3], g[4])) or _pair(g[3], g[4])
            if numel < 0 or offset < 0 or pair[2]:
                raise _Refused
            info = storages.get(storage_key)
            if info is None:  # as ``torch_persistent_load`` and ``stand_ins._tensor`` make them
                info = storages[storage_key] = new_storage(storage_key, dtype, numel, device)
            tree[key] = new_tensor(storage_key, info.dtype, offset, pair[0], pair[1],
                                   info.location, g[5] == b"\x88", "strided")
        return after

    def _tensor(self, key: str, storage_key: str, dtype: str, numel: int, device: str,
                offset: int, shape: tuple[int, ...], stride: tuple[int, ...],
                grad: bytes) -> None:
        """The tensor and its storage, as ``torch_persistent_load`` and ``_tensor`` make them."""
        storages = self.ctx.storages
        info = storages.get(storage_key)
        if info is None:
            info = new_storage_info(storage_key, dtype, numel, device)
            storages[storage_key] = info
        self.tree[key] = new_placeholder(info.key, info.dtype, offset, shape, stride,
                                         info.location, grad == b"\x88", "strided")

    def global_(self, module: str, name: str, put: bytes) -> tuple[str, str]:
        self.ctx.resolve_global(module, name)  # records it, as the unpickler's find_class
        value = (module, name)
        self.put(put, value)
        return value

    def fetch(self, get: bytes) -> Any:
        value = self.memo.get(_index(get), _OTHER)
        if value is _OTHER:
            raise _Refused
        return value

    def record(self, data: Any, pos: int, end: int) -> int:
        """Read the (key, tensor) pair at ``pos``, memo operations in the pickle's order;
        returns the offset after it."""
        start = pos + 5 + int.from_bytes(data[pos + 1:pos + 5], "little")
        m = _RECORD.match(data, start, end) if start < end else None
        if m is None:
            raise _Refused
        g = m.groups()
        shared, g = g[11], g[:11] + g[12:]  # a storage key fetched (a view of a stored one)
        try:
            key = str(data[pos + 5:start], "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _Refused from None
        self.put(g[0], key)
        dtype, storage_key, device = self._storage(g, shared)
        numel, offset = _int(g[15]), _int(g[17])
        shape = () if g[18] else _ints(g[19])
        stride = () if g[21] else _ints(g[22])
        if numel < 0 or offset < 0 or len(shape) != len(stride):
            raise _Refused
        for put in (g[16], g[20], g[23]):  # the pid, shape and stride tuples, in order
            if put is not None:
                self.put(put, _OTHER)
        hooks = self.global_(*_HOOKS, g[25]) if g[25] else self.fetch(g[26])
        if hooks != _HOOKS:
            raise _Refused
        for put in (g[27], g[28], g[29]):  # OrderedDict(), the arguments, the tensor
            self.put(put, _OTHER)
        self._tensor(key, storage_key, dtype, numel, device, offset, shape, stride, g[24])
        return m.end()

    def _storage(self, g: tuple[Any, ...], shared: bytes | None) -> tuple[str, str, str]:
        """``(dtype, storage key, device)`` of a record's persistent id: the rebuild global,
        'storage', the storage class, key and device, stored or fetched in order."""
        rebuild = self.global_(*_REBUILD, g[1]) if g[1] else self.fetch(g[2])
        if g[3]:
            self.put(g[3], "storage")
        elif self.fetch(g[4]) != "storage":
            raise _Refused
        if g[5] is not None:
            storage_class = self.global_("torch", g[5].decode("ascii"), g[6])
        else:
            storage_class = self.fetch(g[7])
        if shared is not None:
            storage_key = self.fetch(shared)
        elif len(g[9]) != g[8][0]:
            raise _Refused
        else:
            storage_key = g[9].decode("ascii")
            self.put(g[10], storage_key)
        if g[11] is not None:
            if len(g[12]) != g[11][0]:
                raise _Refused
            device = g[12].decode("ascii")
            self.put(g[13], device)
        else:
            device = self.fetch(g[14])
        if (rebuild != _REBUILD or type(storage_class) is not tuple or storage_class[0] != "torch"
                or storage_class[1] not in STORAGE_DTYPES or type(device) is not str
                or type(storage_key) is not str):
            raise _Refused
        return STORAGE_DTYPES[storage_class[1]], storage_key, device


def read_plain_state(data: Any, offset: int, name: str) -> tuple[Any, Any, dict[str, StorageInfo],
                                                                   int] | None:
    """``(tree, globals, storages, end)`` of the plain-dict pickle at ``offset``, as
    ``walk.walk_pickle`` makes them with the unpickler; None when the bytes are not that form
    or the scan's walk of these same bytes took none of its records in runs (then the
    unpickler is the faster reader).

    Args:
        data: the pickle's bytes.
        offset: where the pickle starts.
        name: how the pickle is named in ``GlobalRef.pickle``.
    """
    runs = proven_runs(data, offset)
    head = _HEADER.match(data, offset) if runs else None
    if head is None:
        return None
    reader, state = _Reader(name), None
    try:
        if head.group(1) is not None:
            reader.put(head.group(1), _OTHER)
        else:  # a state_dict(): OrderedDict() with its _metadata as BUILD state
            reader.global_(*_HOOKS, head.group(2))
            reader.put(head.group(3), _OTHER)
        pos = _items(reader, data, head.end(), offset, runs)
        if head.group(1) is None and data[pos:pos + 1] == b"}":
            state, pos = _metadata(reader, data, pos)
    except _Refused:
        return None
    if data[pos:pos + 1] != b".":
        return None
    tree: Any = reader.tree
    if head.group(1) is None:
        tree = OrderedDict(tree.items())  # ``stand_ins.ordered_dict_of``
        if state is not None:
            tree.__dict__.update(state)
    return tree, tuple(reader.ctx.globals.values()), reader.ctx.storages, pos + 1


def _items(reader: _Reader, data: Any, pos: int, offset: int,
           runs: dict[int, tuple[Any, ...]]) -> int:
    """Read the (key, tensor) pairs from ``pos``: batches of ``MARK pairs SETITEMS`` or one
    ``pair SETITEM``; returns the offset of the first opcode after them."""
    end, alone = len(data), 0
    while pos < end and data[pos] in (_MARK, _BINUNICODE):
        if data[pos] == _BINUNICODE:  # one pair, then SETITEM (a run is two or more)
            closing = _SETITEM
            if pos - offset in runs:
                raise _Refused
            pos = reader.record(data, pos, end)
        else:
            closing, pos = _SETITEMS, pos + 1
            while pos < end and data[pos] == _BINUNICODE:
                run = runs.get(pos - offset)
                if run is not None:
                    pos = offset + reader.run(run)
                    continue
                alone += 1
                if alone > MAX_ALONE:
                    raise _Refused
                pos = reader.record(data, pos, end)
        if pos >= end or data[pos] != closing:
            raise _Refused
        pos += 1
    return pos


def _metadata(reader: _Reader, data: Any, pos: int) -> tuple[dict[str, Any], int]:
    """Read a state_dict's BUILD state ``{'_metadata': OrderedDict(name: {'version': int})}``
    at ``pos``; returns it and the offset after the BUILD."""
    m = _STATE.match(data, pos)
    if m is None:
        raise _Refused
    reader.put(m.group(1), _OTHER)
    reader.put(m.group(2), "_metadata")
    hooks = reader.global_(*_HOOKS, m.group(3)) if m.group(3) else reader.fetch(m.group(4))
    if hooks != _HOOKS:
        raise _Refused
    reader.put(m.group(5), _OTHER)
    meta: OrderedDict[str, Any] = OrderedDict()
    pos, end = m.end(), len(data)
    while pos < end and data[pos] in (_MARK, _BINUNICODE):
        closing = _SETITEMS if data[pos] == _MARK else _SETITEM
        pos += data[pos] == _MARK
        while pos < end and data[pos] == _BINUNICODE:
            pos = _entry(reader, data, pos, meta)
            if closing == _SETITEM:
                break
        if pos >= end or data[pos] != closing:
            raise _Refused
        pos += 1
    if data[pos:pos + 2] != b"sb":  # state['_metadata'] = ..., BUILD
        raise _Refused
    return {"_metadata": meta}, pos + 2


def _entry(reader: _Reader, data: Any, pos: int, meta: dict[str, Any]) -> int:
    """One ``name: {'version': int}`` pair of ``_metadata``; returns the offset after it."""
    start = pos + 5 + int.from_bytes(data[pos + 1:pos + 5], "little")
    m = _ENTRY.match(data, start) if start < len(data) else None
    if m is None:
        raise _Refused
    try:
        module = str(data[pos + 5:start], "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise _Refused from None
    reader.put(m.group(1), module)
    reader.put(m.group(2), _OTHER)
    if m.group(3):
        reader.put(m.group(3), "version")
    elif reader.fetch(m.group(4)) != "version":
        raise _Refused
    meta[module] = {"version": _int(m.group(5))}
    return m.end()
