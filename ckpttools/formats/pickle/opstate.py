"""The symbolic pickle machine that ``opwalk`` drives: a stack and memo of stand-in values,
the globals named, the calls made, and the keys each container gets.

Values are str (a string operand), int and float (dict keys are hashed by value), ``Global``,
``Tup``, ``Computed`` (a fresh one per container, so keys are counted per container) and
``MARK``. Nothing is imported or called.
"""

from __future__ import annotations

import copyreg
from typing import Any

from ckpttools.entries import GlobalRef
from ckpttools.formats.pickle.safety import classify_global, normalize_global

__all__ = ["EQUAL_HASH_LIMIT", "HANDLERS", "MARK", "OPAQUE_KEY_LIMIT", "OTHER", "Computed",
           "Global", "State", "Stop", "Tup", "count_keys"]


class Global:
    """A named global (what ``GLOBAL``/``STACK_GLOBAL``/``INST`` push)."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname


class Computed:
    """A value made by a call or an opcode the walk does not model."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


class Built(Computed):
    """An object ``NEWOBJ`` makes of a class whose hash is that of a str field (DCP's
    ``MetadataIndex`` hashes ``(fqn, offset)``); ``str_hashed`` once ``BUILD`` gave that field a
    str, whose hash is randomised per process, so such keys cannot be made to collide."""

    __slots__ = ("field", "str_hashed")

    def __init__(self, what: str, field: str) -> None:
        super().__init__(what)
        self.field = field
        self.str_hashed = False


# classes whose hash mixes in the named str field (a frozen dataclass hashing its fields)
STR_HASHED = {"torch.distributed.checkpoint.metadata.MetadataIndex": "fqn"}


class Stop(ValueError):
    """Where the real unpickler would raise; nothing after it runs."""


class Tup:
    """A tuple, by how deep tuples nest in it and its first item when that is a number (a
    list of ``(key, value)`` pairs given to ``dict``/``OrderedDict`` hashes those)."""

    __slots__ = ("depth", "key")

    def __init__(self, depth: int, first: Any = None) -> None:
        self.depth = depth
        self.key = first if type(first) in (int, float) else None


MARK = object()
OTHER = Computed("a value")
# Distinct keys of one hash make building a dict or set quadratic in their number (CPython
# probes every earlier key of that hash); int, float and tuple hashes are not randomised, so a
# file can choose them. No checkpoint has this many in one container.
EQUAL_HASH_LIMIT = 1_000
OPAQUE_KEY_LIMIT = 10_000  # keys whose hash the walk does not know (tuples, None, ...)
_OPAQUE = object()


class State:
    """The stack, memo, globals and findings of one walk."""

    __slots__ = ("name", "stack", "memo", "globals", "findings", "protocol", "keys", "hostile",
                 "text_put", "frames_end", "str_states", "runs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.globals: dict[tuple[str, str], GlobalRef] = {}
        self.findings: list[tuple[str, int, str]] = []
        self.protocol = 0
        self.keys: dict[int, tuple[Any, dict[Any, int]]] = {}  # id(dict) -> (dict, hash counts)
        self.hostile = ""
        self.text_put = False  # a PUT with a text index (``walk.scan_pickle`` reads it strictly)
        self.frames_end = 0  # where the furthest-reaching FRAME says its bytes end
        # id(state dict) -> the dict, for the BUILD states that give a ``Built``'s field a str
        self.str_states: dict[int, Any] = {}
        # the runs ``record_runs`` took: (offset, end, first memo index, fetches, matches, keys)
        self.runs: list[tuple[Any, ...]] = []

    def top(self) -> Any:
        """The value under the operands just popped (the container they go into)."""
        if not self.stack:
            raise Stop("stack underflow: the unpickler stops here")
        return self.stack[-1]

    def pop(self) -> Any:
        if not self.stack:
            raise Stop("stack underflow: the unpickler stops here")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        stack = self.stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        del stack[:]
        raise Stop("no MARK on the stack: the unpickler stops here")

    def add_global(self, module: str, name: str) -> Global:
        module, name = normalize_global(module, name)
        if (module, name) not in self.globals:
            safety, reason = classify_global(module, name)
            self.globals[(module, name)] = GlobalRef(module, name, safety, self.name, reason)
        return Global(f"{module}.{name}")

    def flag(self, pos: int, message: str, safety: str = "unsafe") -> None:
        self.findings.append((safety, pos, message))

    def call(self, callee: Any, pos: int, how: str) -> None:
        if not isinstance(callee, Global):
            what = callee.what if isinstance(callee, Computed) else (
                "str" if type(callee) is str else "a value")
            self.flag(pos, f"{how} at offset {pos} calls {what}, not a named global "
                           "(a getattr/attrgetter-style chain)")


def _number_key(v: Any) -> Any:
    """The number that will be hashed for ``v`` (a pair's key for a pair), or None."""
    if type(v) in (int, float):
        return v
    return v.key if type(v) is Tup else None


def count_keys(w: State, target: Any, items: list[Any], pos: int, keys: bool = True) -> None:
    """Count the distinct values of one hash that a dict, set or list gets (list items and
    pairs become keys once passed to ``set``/``dict``); flag the first count past a limit.

    Args:
        keys: the items are keys of a dict or set (also count those whose hash is unknown).
    """
    if w.hostile:
        return
    entry = w.keys.get(id(target))
    if entry is None:
        entry = w.keys[id(target)] = (target, {})
    seen = entry[1]
    for item in items:
        if type(item) is str or (type(item) is Built and item.str_hashed):
            continue  # str hashes are randomised per process
        value = _number_key(item)
        if value is None:
            if not keys:
                continue
            h, text = _OPAQUE, len(seen.get(_OPAQUE, ()))  # cannot tell apart: each counts
        else:
            h, text = hash(value), value.hex() if type(value) is float else hex(value)
        bucket = seen.setdefault(h, set())
        bucket.add(text)  # str of the value: a set of the colliding numbers would collide too
        if len(bucket) > (OPAQUE_KEY_LIMIT if h is _OPAQUE else EQUAL_HASH_LIMIT):
            what = ("keys whose hashes the walk cannot tell apart" if h is _OPAQUE
                    else "distinct keys with one hash")
            w.hostile = (f"a container built at offset {pos} gets more than {len(bucket) - 1} "
                         f"{what}: hashing them takes time quadratic in their number "
                         "(a hash-collision attack on the loader)")
            w.flag(pos, w.hostile)
            return


def _note_str_field(w: State, target: Any, items: list[Any]) -> None:
    """Whether the dict ``target``, the state a ``Built`` below it awaits, gives the Built's
    field a str (the last value set wins, as in the dict)."""
    field = w.stack[-2].field
    for key, value in zip(items[::2], items[1::2]):
        if key == field:
            if type(value) is str:
                w.str_states[id(target)] = target
            else:
                w.str_states.pop(id(target), None)


def _setitem(w: State, arg: Any, pos: int) -> None:
    value = w.pop()
    key = w.pop()
    if len(w.stack) > 1 and type(w.stack[-2]) is Built:
        _note_str_field(w, w.top(), [key, value])
    count_keys(w, w.top(), [key], pos)


def _setitems(w: State, arg: Any, pos: int) -> None:
    items = w.pop_mark()
    if len(w.stack) > 1 and type(w.stack[-2]) is Built:
        _note_str_field(w, w.top(), items)
    count_keys(w, w.top(), items[::2], pos)


def _additems(w: State, arg: Any, pos: int) -> None:
    items = w.pop_mark()
    count_keys(w, w.top(), items, pos)


def _append(w: State, arg: Any, pos: int) -> None:
    item = w.pop()
    count_keys(w, w.top(), [item], pos, keys=False)


def _appends(w: State, arg: Any, pos: int) -> None:
    items = w.pop_mark()
    count_keys(w, w.top(), items, pos, keys=False)


def _made(what: str, keys: bool, pairs: bool) -> Any:
    def handler(w: State, arg: Any, pos: int) -> None:
        made = Computed(what)
        items = w.pop_mark()
        if len(items) > EQUAL_HASH_LIMIT:  # fewer cannot pass a limit (and most are tiny)
            count_keys(w, made, items[::2] if pairs else items, pos, keys)
        w.stack.append(made)
    return handler


def _empty(w: State, arg: Any, pos: int) -> None:
    w.stack.append(Computed("a container"))


def _global(w: State, arg: str, pos: int) -> None:
    module, _, name = arg.partition(" ")
    w.stack.append(w.add_global(module, name))


def _stack_global(w: State, arg: Any, pos: int) -> None:
    name, module = w.pop(), w.pop()
    if isinstance(module, str) and isinstance(name, str):
        w.stack.append(w.add_global(module, name))
        return
    shown = [v if isinstance(v, str) else "?" for v in (module, name)]
    w.flag(pos, f"STACK_GLOBAL at offset {pos} imports a name computed at load time "
                f"({shown[0]}.{shown[1]}); a dynamic global")
    w.stack.append(Computed(f"the dynamic global at offset {pos}"))


def _inst(w: State, arg: str, pos: int) -> None:
    module, _, name = arg.partition(" ")
    w.pop_mark()
    w.add_global(module, name)
    w.stack.append(Computed(f"the {module}.{name} object"))


def _obj(w: State, arg: Any, pos: int) -> None:
    items = w.pop_mark()
    w.call(items[0] if items else OTHER, pos, "OBJ")
    w.stack.append(Computed(f"the object made at offset {pos}"))


def _reduce(w: State, arg: Any, pos: int) -> None:
    w.pop()
    callee = w.pop()
    w.call(callee, pos, "REDUCE")
    name = callee.qualname if isinstance(callee, Global) else "a computed value"
    w.stack.append(Computed(f"the result of calling {name}"))


def _newobj(w: State, arg: Any, pos: int) -> None:
    w.pop()
    cls = w.pop()
    w.call(cls, pos, "NEWOBJ")
    field = STR_HASHED.get(cls.qualname) if isinstance(cls, Global) else None
    what = f"the object made at offset {pos}"
    w.stack.append(Built(what, field) if field else Computed(what))


def _newobj_ex(w: State, arg: Any, pos: int) -> None:
    w.pop()
    _newobj(w, arg, pos)


def _build(w: State, arg: Any, pos: int) -> None:
    state = w.pop()
    target = w.stack[-1] if w.stack else OTHER
    if type(target) is Built:  # a later BUILD without the str field undoes it
        target.str_hashed = w.str_states.pop(id(state), None) is state
    if isinstance(target, Global):
        # modelscan#85: BUILD on a function or module sets its attributes, which a later
        # dotted global or STACK_GLOBAL then reads back
        w.flag(pos, f"BUILD at offset {pos} sets attributes on {target.qualname} itself")


def _dup(w: State, arg: Any, pos: int) -> None:
    w.stack.append(w.stack[-1] if w.stack else OTHER)


def _memoize(w: State, arg: Any, pos: int) -> None:
    w.memo[len(w.memo)] = w.stack[-1] if w.stack else OTHER


def _proto(w: State, arg: int, pos: int) -> None:
    w.protocol = arg


def _ext(w: State, code: int, pos: int) -> None:
    key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
    where = f"extension code {code} at offset {pos}"
    if key is None:
        w.flag(pos, f"{where}: a global taken from the loader's copyreg extension "
                    "registry, not named in the file")
        w.stack.append(Computed(f"the global of {where}"))
    else:
        w.flag(pos, f"{where} names {key[0]}.{key[1]} through the copyreg registry")
        w.stack.append(w.add_global(*key))


HANDLERS = {
    "GLOBAL": _global, "STACK_GLOBAL": _stack_global, "INST": _inst, "OBJ": _obj,
    "REDUCE": _reduce, "NEWOBJ": _newobj, "NEWOBJ_EX": _newobj_ex, "BUILD": _build,
    "DUP": _dup, "MEMOIZE": _memoize, "PROTO": _proto, "EXT1": _ext, "EXT2": _ext, "EXT4": _ext,
    "SETITEM": _setitem, "SETITEMS": _setitems, "ADDITEMS": _additems, "APPEND": _append,
    "APPENDS": _appends, "DICT": _made("a dict", True, True),
    "FROZENSET": _made("a frozenset", True, False), "LIST": _made("a list", False, False),
    "EMPTY_DICT": _empty, "EMPTY_SET": _empty, "EMPTY_LIST": _empty,
}

