"""The opcodes of one pickle, with each argument read exactly as CPython's C unpickler
(``Modules/_pickle.c``) reads it.

``pickletools.genops`` parses some text arguments differently from the unpickler that runs the
file: ``INT`` goes through C ``strtol(s, &end, 0)`` (hex, octal, a trailing NUL) and then
``int(s, 0)``, ``LONG`` through ``int(s, 0)``, ``FLOAT`` stops at a NUL, a protocol-0 ``STRING``
may hold any bytes. A scanner that stops where the unpickler goes on misses what follows, so
this reader stops only where the C unpickler raises. Where unpicklers differ among themselves
(the ``encoding`` of ``STRING``, ``PERSID`` with no ``persistent_load``), it goes on.
"""

from __future__ import annotations

import codecs
import math
import pickletools
import re
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["NAMES", "OpcodeError", "TruncatedError", "iter_ops", "read_arg", "single_integer"]

HIGHEST_PROTOCOL = 5
NAMES: dict[int, str] = {ord(op.code): op.name for op in pickletools.opcodes}
_FIXED = {"BININT": (4, True), "BININT1": (1, False), "BININT2": (2, False),
          "BINGET": (1, False), "LONG_BINGET": (4, False), "BINPUT": (1, False),
          "LONG_BINPUT": (4, False), "EXT1": (1, False), "EXT2": (2, False),
          "EXT4": (4, True), "PROTO": (1, False), "FRAME": (8, False)}
# counted arguments: (bytes of the count, signed count, decode)
_COUNTED = {"LONG1": (1, False, "long"), "LONG4": (4, True, "long"),
            "BINSTRING": (4, True, ""), "SHORT_BINSTRING": (1, False, ""),
            "BINBYTES": (4, False, ""), "SHORT_BINBYTES": (1, False, ""),
            "BINBYTES8": (8, False, ""), "BYTEARRAY8": (8, False, ""),
            "BINUNICODE": (4, False, "utf8"), "SHORT_BINUNICODE": (1, False, "utf8"),
            "BINUNICODE8": (8, False, "utf8")}
_TEXT = frozenset({"INT", "LONG", "STRING", "UNICODE", "FLOAT", "GET", "PUT", "PERSID"})
_FLOAT = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)",
                    re.IGNORECASE)
_SPACE = b" \t\n\v\f\r"
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


class OpcodeError(ValueError):
    """Where the C unpickler raises: nothing after this opcode runs."""


class TruncatedError(OpcodeError):
    """The data ends inside an opcode's argument (or before STOP)."""


def _cut_nul(line: bytes) -> bytes:
    at = line.find(b"\0")
    return line if at < 0 else line[:at]


def _strtol(s: bytes) -> tuple[int, int, bool]:
    """C ``strtol(s, &end, 0)``: ``(value, end index, overflowed)``."""
    i, n = 0, len(s)
    while i < n and s[i] in _SPACE:
        i += 1
    neg = i < n and s[i] == 45
    if i < n and s[i] in b"+-":
        i += 1
    base, digits = 10, b"0123456789"
    if i < n and s[i] == 48:
        if i + 2 < n and s[i + 1] in b"xX" and s[i + 2] in b"0123456789abcdefABCDEF":
            base, digits, i = 16, b"0123456789abcdefABCDEF", i + 2
        else:
            base, digits = 8, b"01234567"
    start = i
    while i < n and s[i] in digits:
        i += 1
    if i == start:
        return 0, 0, False
    value = int(s[start:i], base) * (-1 if neg else 1)
    return value, i, not _LONG_MIN <= value <= _LONG_MAX


def _int_value(line: bytes) -> int:
    """``load_int``: strtol, and ``int(s, 0)`` when strtol did not take the whole line."""
    s = _cut_nul(line)
    value, end, overflow = _strtol(s)
    if not overflow and (end >= len(s) or s[end] == 10):
        return value
    try:
        return int(s, 0)
    except ValueError as e:
        raise OpcodeError("could not convert string to int") from e


def _long_value(line: bytes) -> int:
    """``load_long``: ``int(s, 0)`` of the line without its ``L``."""
    if len(line) >= 2 and line[-2:-1] == b"L":
        line = line[:-2]
    try:
        return int(_cut_nul(line), 0)
    except ValueError as e:
        raise OpcodeError(f"invalid LONG argument: {e}") from e


def _check_float(line: bytes) -> None:
    """``load_float``: ``PyOS_string_to_double`` then a newline or NUL; overflow raises."""
    m = _FLOAT.match(line)
    rest = line[m.end():m.end() + 1] if m else line[:1]
    if m is None or rest not in (b"\n", b"\0"):
        raise OpcodeError("could not convert string to float")
    if math.isinf(float(m.group())) and b"n" not in m.group().lower():
        raise OpcodeError("float overflow")


def _memo_index(line: bytes, name: str) -> int:
    try:
        idx = int(_cut_nul(line), 10)
    except ValueError as e:
        raise OpcodeError(f"bad {name} argument") from e
    if name == "PUT" and idx < 0:
        raise OpcodeError("negative PUT argument")
    if not _LONG_MIN <= idx <= _LONG_MAX:  # PyLong_AsSsize_t overflows: the unpickler stops
        raise OpcodeError(f"{name} argument out of range")
    return idx


def _text_arg(name: str, line: bytes) -> Any:
    """The value of a newline-terminated argument (``line`` includes the newline)."""
    if len(line) < 2 and name not in ("UNICODE", "PERSID"):
        raise TruncatedError("pickle data was truncated")  # bad_readline
    if name == "INT":
        return _int_value(line)
    if name == "LONG":
        return _long_value(line)
    if name == "FLOAT":
        return _check_float(line)
    if name in ("GET", "PUT"):
        return _memo_index(line, name)
    body = line[:-1]
    if name == "UNICODE":
        try:
            return str(body, "raw-unicode-escape")
        except UnicodeDecodeError as e:
            raise OpcodeError(f"bad UNICODE argument: {e.reason}") from e
    if name == "PERSID":
        return body.decode("latin-1")
    # STRING: quoted, escape-decoded; its text encoding depends on the unpickler (go on)
    if len(body) < 2 or body[0] != body[-1] or body[:1] not in (b"'", b'"'):
        raise OpcodeError("the STRING opcode argument must be quoted")
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" warns, it does not stop
            warnings.simplefilter("ignore")
            raw = codecs.escape_decode(body[1:-1])[0]
    except ValueError as e:
        raise OpcodeError(f"bad STRING argument: {e}") from e
    return raw.decode("utf-8", "surrogateescape")


def _readline(data: Any, pos: int, n: int) -> tuple[bytes, int]:
    end = data.find(b"\n", pos, n)
    if end < 0:
        raise TruncatedError("pickle data was truncated (no newline)")
    return bytes(data[pos:end + 1]), end + 1


def _name_pair(data: Any, pos: int, n: int) -> tuple[str, int]:
    """GLOBAL/INST: two lines, each UTF-8 (strict, as ``load_global`` decodes them)."""
    parts = []
    for _ in range(2):
        line, pos = _readline(data, pos, n)
        if len(line) < 2:
            raise TruncatedError("pickle data was truncated")
        try:
            parts.append(line[:-1].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise OpcodeError("GLOBAL/INST names must be UTF-8") from e
    return f"{parts[0]} {parts[1]}", pos


def _counted(data: Any, name: str, pos: int, n: int) -> tuple[Any, int]:
    width, signed, decode = _COUNTED[name]
    if pos + width > n:
        raise TruncatedError("pickle data was truncated")
    size = int.from_bytes(data[pos:pos + width], "little", signed=signed)
    if size < 0:
        raise OpcodeError(f"{name} has a negative byte count")
    pos += width
    if pos + size > n:
        raise TruncatedError("pickle data was truncated")
    if not decode:
        return size, pos + size  # bytes values are never needed, only skipped (not copied)
    raw = data[pos:pos + size]
    if decode == "long":
        return int.from_bytes(raw, "little", signed=True), pos + size
    try:
        return str(raw, "utf-8", "surrogatepass"), pos + size
    except UnicodeDecodeError as e:
        raise OpcodeError(f"{name} is not UTF-8") from e


def read_arg(data: Any, name: str, pos: int, n: int) -> tuple[Any, int]:
    """Read the argument of opcode ``name`` at ``pos``: ``(value, offset after it)``."""
    if name in _FIXED:
        width, signed = _FIXED[name]
        if pos + width > n:
            raise TruncatedError("pickle data was truncated")
        value = int.from_bytes(data[pos:pos + width], "little", signed=signed)
        if name == "PROTO" and value > HIGHEST_PROTOCOL:
            raise OpcodeError(f"unsupported pickle protocol: {value}")
        if name == "FRAME" and pos + width + value > n:
            raise TruncatedError("pickle data was truncated (frame)")
        if name.startswith("EXT") and value <= 0:
            raise OpcodeError("EXT specifies code <= 0")
        return value, pos + width
    if name == "BINFLOAT":
        if pos + 8 > n:
            raise TruncatedError("pickle data was truncated")
        return None, pos + 8
    if name in _COUNTED:
        return _counted(data, name, pos, n)
    if name in ("GLOBAL", "INST"):
        return _name_pair(data, pos, n)
    if name in _TEXT:
        line, end = _readline(data, pos, n)
        return _text_arg(name, line), end
    return None, pos


def iter_ops(data: Any, pos: int = 0, end: int | None = None) -> Iterator[tuple[str, Any, int]]:
    """Yield ``(opcode name, argument, offset)`` up to and including STOP.

    Args:
        data: ``bytes``, ``memoryview`` or ``mmap`` holding the pickle.
        pos: where the pickle starts.
        end: where the data ends (default: its length).

    Raises:
        OpcodeError: where the C unpickler would raise (unknown opcode, truncation, bad argument).
    """
    n = len(data) if end is None else end
    while True:
        if pos >= n:
            raise TruncatedError("pickle data was truncated (no STOP opcode)")
        name = NAMES.get(data[pos])
        if name is None:
            raise OpcodeError(f"invalid load key, {bytes([data[pos]])!r}")
        arg, nxt = read_arg(data, name, pos + 1, n)
        yield name, arg, pos
        if name == "STOP":
            return
        pos = nxt


# opcodes that push an integer (with its value as the argument), and those that only frame a pickle
_INTEGER_OPS = frozenset({"INT", "LONG", "LONG1", "LONG4", "BININT", "BININT1", "BININT2"})
_FRAMING_OPS = frozenset({"PROTO", "FRAME", "STOP"})


def single_integer(data: Any, pos: int = 0, end: int | None = None) -> int | None:
    """The integer a pickle consisting of one integer opcode holds, read from the opcodes
    without unpickling anything (no loader, ``weights_only`` or not, runs); None for any other
    pickle or bad data.

    torch's legacy format starts with its magic number pickled this way, in any protocol.
    """
    try:
        ops = [(name, arg) for name, arg, _ in iter_ops(data, pos, end) if name not in _FRAMING_OPS]
    except OpcodeError:
        return None
    if len(ops) != 1 or ops[0][0] not in _INTEGER_OPS:
        return None
    return int(ops[0][1])
