"""The restricted pickle walker: structures, placeholders, globals, malformed input."""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ckpttools.entries import ObjectPlaceholder
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.pickle.walk import TorchDtype, safe_globals_hint, walk_pickle


@dataclass
class TrainConfig:
    lr: float = 0.1
    layers: int = 2


class AttrDict(dict):  # type: ignore[type-arg]
    """Like Lightning's AttributeDict: a dict subclass."""


PLAIN = {"a": [1, 2.5, "x", None, True], "b": (1, (2, 3)), "c": {1, 2}, "d": b"\x00\xff",
         "e": OrderedDict(k=1), "u": "ünï", 7: -(2**70)}


@pytest.mark.parametrize("protocol", range(6), ids=lambda p: f"protocol{p}")
def test_plain_structures_round_trip(protocol: int) -> None:
    result = walk_pickle(pickle.dumps(PLAIN, protocol=protocol))
    assert result.tree == {**PLAIN, "e": {"k": 1}}
    assert all(g.safety == "safe" or g.qualname == "_codecs.encode" for g in result.globals)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_unknown_classes_become_placeholders(protocol: int) -> None:
    obj = {"ns": argparse.Namespace(lr=0.5, name="run"), "cfg": TrainConfig(),
           "hp": AttrDict(lr=0.1)}
    tree = walk_pickle(pickle.dumps(obj, protocol=protocol)).tree
    assert tree["ns"] == ObjectPlaceholder("argparse.Namespace", (), {"lr": 0.5, "name": "run"})
    assert tree["cfg"].class_name == f"{__name__}.TrainConfig"
    assert tree["cfg"].state == {"lr": 0.1, "layers": 2}
    assert tree["hp"].class_name == f"{__name__}.AttrDict"
    assert ("lr", 0.1) in tree["hp"].items


def test_torch_dtype_values_are_markers() -> None:
    torch = pytest.importorskip("torch")
    tree = walk_pickle(pickle.dumps({"d": torch.bfloat16, "s": torch.Size([2, 3])})).tree
    assert tree == {"d": TorchDtype("bfloat16"), "s": (2, 3)}


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_dangerous_globals_are_recorded_never_called(protocol: int, canary: Path) -> None:
    result = walk_pickle(pickle.dumps({"x": _Payload(canary)}, protocol=protocol), name="p.pkl")
    (ref,) = result.unsafe_globals
    assert ref.qualname in ("posix.system", "os.system") and ref.pickle == "p.pkl"
    assert result.tree["x"].class_name == ref.qualname
    assert result.tree["x"].args == (f"touch {canary}",)
    assert safe_globals_hint(result.globals) is None


def test_safe_globals_hint_lists_benign_classes() -> None:
    result = walk_pickle(pickle.dumps({"ns": argparse.Namespace(a=1)}, protocol=2))
    hint = safe_globals_hint(result.globals)
    assert hint is not None and "add_safe_globals([argparse.Namespace])" in hint
    assert safe_globals_hint(walk_pickle(pickle.dumps([1], protocol=2)).globals) is None


def test_cycles_terminate() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert walk_pickle(pickle.dumps(loop, protocol=2)).tree == [1, "<cycle>"]


MALFORMED = [
    (b"", "truncated"),
    (pickle.dumps({"a": 1})[:-3], "truncated|past the end"),
    (b"\x80\x02]r\xff\xff\xff\x7f.", "memo index"),  # would size the C memo to 32 GB
    (b"\x80\x02]p99999999999\n.", "memo index"),
    (b"\x80\x02B\xff\xff\xff\x7f" + b"x" * 10, "past the end"),  # 2 GB bytes claim
    (b"\x80\x04\x95\xff\xff\xff\xff\xff\x00\x00\x00.", "past the end"),
    (b"\x80\x02\xfe.", "unknown opcode"),
    (b"\x80\x02h\x05.", "malformed pickle"),  # memo get of nothing
    (b"garbage!", "malformed pickle"),
]


@pytest.mark.parametrize(("data", "fragment"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_pickles_raise_one_line(data: bytes, fragment: str) -> None:
    with pytest.raises(CorruptCheckpointError, match=fragment) as info:
        walk_pickle(data, name="bad.pkl")
    assert str(info.value).startswith("bad.pkl: ") and "\n" not in str(info.value)


def test_deep_nesting_is_corrupt_not_a_crash() -> None:
    data = b"\x80\x02" + b"(" * 100_000 + b"K\x01" + b"\x85" * 100_000 + b"."
    try:
        walk_pickle(data)
    except CorruptCheckpointError:
        pass
