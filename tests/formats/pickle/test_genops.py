"""The opcode reader against CPython's own unpickler, on generated opcode streams.

Each stream puts an argument in front of a call of a marker global: the C unpickler reaches the
call exactly when it accepted the argument, and the scanner must then see the call too. For the
arguments with one reading (INT, LONG, FLOAT, PUT/GET, UNICODE) both must agree exactly.
"""

from __future__ import annotations

import io
import pickle
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpttools.formats.pickle.genops import OpcodeError, iter_ops
from ckpttools.formats.pickle.opwalk import max_tuple_depth, walk_ops
from ckpttools.ops.audit.opcodes import scan_opcodes

MARKER = b"cmarker\nfn\n)R."  # GLOBAL marker.fn, EMPTY_TUPLE, REDUCE, STOP


class _Recorder(pickle.Unpickler):
    def __init__(self, data: bytes, encoding: str = "ASCII") -> None:
        super().__init__(io.BytesIO(data), encoding=encoding)
        self.seen: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.seen.append(f"{module}.{name}")
        return lambda *args: None


def _cpython_reaches_marker(data: bytes, encoding: str = "ASCII") -> bool:
    rec = _Recorder(data, encoding)
    with warnings.catch_warnings():  # a loader's warnings (bad escapes) do not stop it
        warnings.simplefilter("ignore")
        try:
            rec.load()
        except Exception:  # any error: the marker is reached only if recorded before it
            pass
    return "marker.fn" in rec.seen


def _scanner_reaches_marker(data: bytes) -> bool:
    return "marker.fn" in [g.qualname for g in scan_opcodes(data, "p").globals]


_TEXT = st.text(alphabet="0123456789abcdefxXoObB_+- \t.eELinfa\x00\x0b", max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from([b"I", b"L", b"F"]), arg=_TEXT)
def test_numeric_text_arguments_match_cpython(op: bytes, arg: str) -> None:
    data = op + arg.encode("latin-1") + b"\n0" + MARKER
    assert _scanner_reaches_marker(data) == _cpython_reaches_marker(data), data


@settings(max_examples=120, deadline=None)
@given(arg=st.text(alphabet="0123456789 +-_x\x00", max_size=8))
def test_memo_text_arguments_match_cpython(arg: str) -> None:
    data = b"N" + b"p" + arg.encode() + b"\n0" + MARKER
    assert _scanner_reaches_marker(data) == _cpython_reaches_marker(data), data
    data = b"Np0\n0g" + arg.encode() + b"\n0" + MARKER
    assert _scanner_reaches_marker(data) == _cpython_reaches_marker(data), data


@settings(max_examples=150, deadline=None)
@given(arg=st.binary(max_size=10))
def test_string_arguments_never_hide_what_follows(arg: bytes) -> None:
    """STRING's text encoding depends on the unpickler: the scanner reads on wherever any
    encoding would, and exactly where escape decoding itself succeeds."""
    arg = arg.replace(b"\n", b"")
    for quoted in (b"'" + arg + b"'", b'"' + arg + b'"', arg):
        data = b"S" + quoted + b"\n0" + MARKER
        cpython = any(_cpython_reaches_marker(data, enc) for enc in ("ASCII", "latin1", "bytes"))
        assert _scanner_reaches_marker(data) == cpython, data
        data = b"V" + arg + b"\n0" + MARKER
        assert _scanner_reaches_marker(data) == _cpython_reaches_marker(data), data


@pytest.mark.parametrize("arg", [b"0x10", b"010", b"0o7", b"0b101", b"1_000", b" 12", b"+1",
                                 b"12\x00junk", b"\x00", b"99999999999999999999999", b"0x",
                                 b"08", b"1e3", b"--1", b""])
@pytest.mark.parametrize("op", [b"I", b"L"])
def test_integer_forms(op: bytes, arg: bytes) -> None:
    data = op + arg + b"\n0" + MARKER
    assert _scanner_reaches_marker(data) == _cpython_reaches_marker(data)


@settings(max_examples=150, deadline=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=4), max_leaves=20),
    protocol=st.integers(0, 5))
def test_every_protocol_reads_to_stop(value: Any, protocol: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    ops = list(iter_ops(data))
    assert ops[-1][0] == "STOP" and ops[-1][2] == len(data) - 1


@settings(max_examples=120, deadline=None)
@given(value=st.lists(st.integers() | st.text(max_size=4), max_size=5),
       protocol=st.integers(0, 5), at=st.integers(0, 200), byte=st.integers(0, 255))
def test_mutated_streams_never_hide_a_global_cpython_imports(value: list[Any], protocol: int,
                                                             at: int, byte: int) -> None:
    data = bytearray(pickle.dumps(value, protocol=protocol)[:-1] + MARKER)
    data[at % len(data)] = byte
    if _cpython_reaches_marker(bytes(data)):
        assert _scanner_flags_marker(bytes(data))


def _scanner_flags_marker(data: bytes) -> bool:
    """The scanner sees the marker's import, or refuses the stream as unsafe."""
    scan = scan_opcodes(data, "p")
    return "marker.fn" in [g.qualname for g in scan.globals] or any(
        f.safety == "unsafe" for f in scan.findings)


@pytest.mark.parametrize("at", [11, 12, 13, 15])
def test_an_argument_past_its_frame_is_refused(at: int) -> None:
    # A GLOBAL whose line crosses the end of its frame: CPython reading a file (torch.load's
    # BytesIO) drops the frame's rest and imports marker.fn, reading bytes imports cmarker.fn
    data = bytearray(pickle.dumps([0], protocol=4)[:-1] + MARKER)
    data[at] = ord("c")
    assert _cpython_reaches_marker(bytes(data))
    scan = scan_opcodes(bytes(data), "p")
    assert [f.safety for f in scan.findings] == ["unsafe"], scan
    assert "past the end of its frame" in scan.findings[0].message


def test_frames_written_by_pickle_are_not_flagged() -> None:
    value = {"a": [1, 2.5, "x" * 70_000], "b": b"y" * 200_000, "c": list(range(5000))}
    for protocol in (4, 5):
        scan = scan_opcodes(pickle.dumps(value, protocol=protocol), "p")
        assert not scan.findings and not scan.error, scan


def test_protocol_above_5_stops() -> None:
    with pytest.raises(OpcodeError, match="protocol"):
        list(iter_ops(b"\x80\x06N."))


def test_tuple_depth_is_cheap_and_exact() -> None:
    assert max_tuple_depth(pickle.dumps(((1,),), 2)) == 0  # below the cheap limit
    deep = b"\x80\x02N" + b"\x85" * 60_000 + b"."
    assert max_tuple_depth(deep) == 60_000
    shallow = b"\x80\x02(" + b"N\x85" * 60_000 + b"l."  # many tuples, none nested
    assert max_tuple_depth(shallow) == 1


@pytest.mark.parametrize("blob", [
    *(pickle.dumps(0x1950A86A20F9469CFC6C, p) for p in range(6)),
    b"L0x1950A86A20F9469CFC6CL\n.", b"I0x1950A86A20F9469CFC6C\n.", b"I119547037146038801333356\x00x\n.",
    pickle.dumps(0x1950A86A20F9469CFC6C + 1, 2), pickle.dumps(7, 2), b"I01\n.",
    pickle.dumps((0x1950A86A20F9469CFC6C,), 2), b"\x80\x02\x8a\x0a",
])
def test_legacy_magic_is_read_as_the_unpickler_reads_it(blob: bytes) -> None:
    # the legacy magic is recognised from the opcodes alone, with the value pickle.loads returns
    from ckpttools.formats.sniff import LEGACY_MAGIC_NUMBER, is_legacy_magic

    try:
        expected = pickle.loads(blob) == LEGACY_MAGIC_NUMBER  # no globals in any of these blobs
    except Exception:
        expected = False
    assert is_legacy_magic(blob) is expected


def _ops_before_error(data: bytes) -> int:
    count = 0
    try:
        for _ in iter_ops(data):
            count += 1
    except OpcodeError:
        pass
    return count


@pytest.mark.parametrize("protocol, inline", [(2, {"BINUNICODE", "BINPUT", "LONG_BINPUT"}),
                                               (4, {"SHORT_BINUNICODE"})])
def test_the_walk_stops_where_the_opcode_reader_does_at_every_cut(protocol: int,
                                                                   inline: set[str]) -> None:
    # strings (BINUNICODE, SHORT_BINUNICODE) and memo puts (BINPUT, and LONG_BINPUT past 256
    # values) are read inline by the walk; each cut of the stream must stop it where genops stops
    value = {f"k{i}": [f"v{i}", i] for i in range(90)}
    data = pickle.dumps(value, protocol=protocol)
    assert inline <= {name for name, _, _ in iter_ops(data)}
    for cut in range(len(data) + 1):
        walk = walk_ops(data[:cut], "p")
        assert walk.opcodes == _ops_before_error(data[:cut]), cut
        assert walk.malformed == (cut < len(data)), cut


def test_a_string_that_is_not_utf8_stops_the_walk_there() -> None:
    for op, count in ((b"X", b"\x02\x00\x00\x00"), (b"\x8c", b"\x02")):
        data = b"\x80\x04" + op + count + b"\xff\xfe" + b"q\x00" + MARKER
        walk = walk_ops(data, "p")
        assert walk.malformed and "not UTF-8" in walk.error and walk.opcodes == 1
        assert not _scanner_reaches_marker(data) and not _cpython_reaches_marker(data)
