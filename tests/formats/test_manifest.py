"""The manifest encoding: typed tree round trips, unrepresentable values, placeholders."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from ckpttools.entries import ObjectPlaceholder
from ckpttools.formats.manifest import Manifest, TensorLayout, UnrepresentableError
from ckpttools.formats.manifest_tree import TreeEncoder, decode_tree, placeholder_node


def _no_tensors(value: Any, path: str) -> str | None:
    return None


def test_typed_tree_round_trips_exactly() -> None:
    value = {0: "int key", "0": "str key", "t": (1, [2.5, None]), "od": OrderedDict(b=1, a=2),
             "f": float("nan"), "inf": float("-inf"), "big": 2**80, "b": b"\x00\xff",
             "ok": True, "c": complex(1, -2), "dotted.key": "ü"}
    node = TreeEncoder(_no_tensors).encode(value)
    assert node is not None
    text = Manifest(node).to_json()
    back = decode_tree(Manifest.from_json(text).root, lambda n: None)
    assert type(back["t"]) is tuple and type(back["t"][1]) is list
    assert type(back["od"]) is OrderedDict and list(back["od"]) == ["b", "a"]
    assert back[0] == "int key" and back["0"] == "str key"
    assert back["f"] != back["f"] and back["inf"] == float("-inf")
    assert {k: v for k, v in back.items() if k != "f"} == {k: v for k, v in value.items()
                                                             if k != "f"}


def test_numpy_values_round_trip() -> None:
    np = pytest.importorskip("numpy")
    state = np.random.RandomState(3).get_state()
    node = TreeEncoder(_no_tensors).encode({"rng": state, "s": np.float32(1.5)})
    back = decode_tree(node, lambda n: None)  # type: ignore[arg-type]
    assert back["rng"][0] == "MT19937" and (back["rng"][1] == state[1]).all()
    assert back["rng"][1].dtype == state[1].dtype and back["rng"][2:] == state[2:]
    assert back["s"] == np.float32(1.5) and back["s"].dtype == np.float32


def test_numpy_placeholder_from_a_restricted_reader() -> None:
    dtype = ObjectPlaceholder("numpy.dtype", ("u4", False, True), (3, "<", None))
    ph = ObjectPlaceholder("numpy._core.multiarray._reconstruct", (), (1, (2,), dtype, False,
                                                                       b"\x01\0\0\0\x02\0\0\0"))
    node = placeholder_node(ph, "rng")
    assert node == {"t": "ndarray", "dtype": "<u4", "shape": [2], "v": "AQAAAAIAAAA="}


def test_unrepresentable_names_its_key_or_is_dropped() -> None:
    class Thing:
        pass

    value = {"model": {"cfg": Thing(), "x": 1}}
    with pytest.raises(UnrepresentableError, match=r"^model\.cfg: .*Thing.*--drop-unrepresentable"):
        TreeEncoder(_no_tensors).encode(value)
    enc = TreeEncoder(_no_tensors, drop=True)
    assert decode_tree(enc.encode(value), lambda n: None) == {"model": {"x": 1}}  # type: ignore[arg-type]
    assert enc.dropped == ["model.cfg"]


def test_layout_json_and_whole_storage() -> None:
    lay = TensorLayout("float32", (2, 3), (3, 1), "0", 0, 24)
    m = Manifest({"t": "tensor", "v": "w"}, {"w": lay})
    assert Manifest.from_json(m.to_json()).tensors["w"] == lay and lay.is_whole_storage
    assert not TensorLayout("float32", (3, 2), (1, 3), "0", 0, 24).is_whole_storage
