"""SafetensorsReader on real files written by safetensors, and on hand-built headers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ckpttools.entries import TensorRef
from ckpttools.errors import CorruptCheckpointError, UnsupportedError
from ckpttools.formats.manifest import MANIFEST_KEY
from ckpttools.formats.registry import open_checkpoint
from ckpttools.formats.safetensors_file import DTYPES, SafetensorsReader
from ckpttools.keypaths import iter_leaves


def raw_safetensors(header: dict[str, Any], data: bytes) -> bytes:
    """Bytes of a safetensors file with exactly this header and data section."""
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 4, generator=g)
    state = {name: base.to(getattr(torch, name)) for name in (
        "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
        "int64", "int32", "int16", "int8", "uint8", "bool", "complex64")}
    state["uint16"] = torch.arange(6).to(torch.uint16)
    state["uint32"] = torch.arange(6).to(torch.uint32)
    state["uint64"] = torch.arange(6).to(torch.uint64)
    state["scalar"] = torch.tensor(2.5)
    state["empty"] = torch.zeros(0, 3)
    return state


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def test_entries_and_values_match_what_safetensors_wrote(tmp_path: Path) -> None:
    state = all_dtypes()
    path = tmp_path / "all.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    with SafetensorsReader(path) as reader:
        entries = {e.key: e for e in reader.entries()}
        assert set(entries) == set(state)
        for key, t in state.items():
            e = entries[key]
            assert (e.dtype, e.shape, e.nbytes) == (str(t.dtype)[6:], tuple(t.shape),
                                                   t.numel() * t.element_size())
            assert e.location == "all.safetensors"
            assert same_bits(reader.load(key), t), key
        assert reader.metadata() == {"format": "pt"}
        assert reader.manifest() is None
        assert reader.object_entries() == ()
        assert dict(iter_leaves(reader.tree())) == {k: TensorRef(k) for k in entries}


def test_dtype_table_names_are_torch_dtypes() -> None:
    for st_name, (torch_name, size) in DTYPES.items():
        assert getattr(torch, torch_name).itemsize == size, st_name


def test_entries_follow_data_offsets_not_header_order(tmp_path: Path) -> None:
    header = {"b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
              "a": {"dtype": "U8", "shape": [1], "data_offsets": [3, 4]},
              "c": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]}}
    path = tmp_path / "order.safetensors"
    path.write_bytes(raw_safetensors(dict(reversed(header.items())), b"\x01\x02\x03\x04"))
    with SafetensorsReader(path) as reader:
        assert [e.key for e in reader.entries()] == ["b", "c", "a"]
        assert reader.load("a").tolist() == [4]


def test_raw_source_is_the_tensor_bytes(tmp_path: Path) -> None:
    t = torch.arange(10, dtype=torch.int32)
    path = tmp_path / "raw.safetensors"
    save_file({"t": t, "u": torch.ones(3)}, str(path))
    with SafetensorsReader(path) as reader:
        src = reader.raw_source("t")
    assert src is not None and src.path == str(path) and src.length == 40
    with open(path, "rb") as f:
        f.seek(src.offset)
        assert f.read(src.length) == t.numpy().tobytes()


def test_manifest_hook_returns_the_stored_text(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={MANIFEST_KEY: '{"x": 1}', "format": "pt"})
    with open_checkpoint(path) as reader:
        assert isinstance(reader, SafetensorsReader)
        assert reader.manifest() == '{"x": 1}'
        assert reader.metadata()[MANIFEST_KEY] == '{"x": 1}'
        with pytest.raises(CorruptCheckpointError, match="bad ckpttools.manifest"):
            reader.entries()  # a manifest that is not one: the file was tampered with


def test_unknown_key_is_a_key_error(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with SafetensorsReader(path) as reader, pytest.raises(KeyError):
        reader.load("nope")


def test_fnuz_float8_loads_without_the_safetensors_library(tmp_path: Path) -> None:
    t = torch.randn(4).to(torch.float8_e4m3fnuz)
    header = {"f": {"dtype": "F8_E4M3FNUZ", "shape": [2, 2], "data_offsets": [0, 4]}}
    path = tmp_path / "fnuz.safetensors"
    path.write_bytes(raw_safetensors(header, t.view(torch.uint8).numpy().tobytes()))
    with SafetensorsReader(path) as reader:
        assert reader.entries()[0].dtype == "float8_e4m3fnuz"
        assert same_bits(reader.load("f"), t.reshape(2, 2))


def test_packed_subbyte_dtype_is_unsupported(tmp_path: Path) -> None:
    header = {"q": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}
    path = tmp_path / "f4.safetensors"
    path.write_bytes(raw_safetensors(header, b"\x00"))
    with pytest.raises(UnsupportedError, match="packed dtype F4"):
        SafetensorsReader(path)


@pytest.mark.parametrize("header, fragment", [
    ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, "unused bytes before"),
    ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, "bytes after the last tensor"),
    ({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 2]}}, "bad shape"),
    ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 0]}}, "bad data_offsets"),
    ({"a": {"dtype": "U8", "shape": [2]}}, "bad data_offsets"),
    ({"a": [1, 2]}, "not an object"),
    ({"__metadata__": {"n": 1}, "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}},
     "__metadata__ must map strings to strings"),
], ids=["hole", "trailing", "negative-shape", "reversed-offsets", "no-offsets", "entry-list",
        "metadata-int"])
def test_header_inconsistencies(tmp_path: Path, header: dict[str, Any], fragment: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw_safetensors(header, b"\x00\x00"))
    with pytest.raises(CorruptCheckpointError, match=fragment):
        SafetensorsReader(path)


def test_header_over_the_safetensors_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write((100_000_001).to_bytes(8, "little") + b"{")
        f.truncate(100_000_100)  # sparse: nothing near 100 MB is written or read
    with pytest.raises(CorruptCheckpointError, match="exceeds the safetensors limit"):
        SafetensorsReader(path)


def test_listing_imports_no_torch_and_scales(tmp_path: Path) -> None:
    header = {f"layers.{i}.weight": {"dtype": "F16", "shape": [2], "data_offsets": [4 * i, 4 * i + 4]}
              for i in range(20_000)}
    path = tmp_path / "many.safetensors"
    path.write_bytes(raw_safetensors(header, bytes(80_000)))
    code = (
        "import sys\n"
        "from ckpttools.formats.registry import open_checkpoint\n"
        f"with open_checkpoint({str(path)!r}) as r:\n"
        "    entries = r.entries()\n"
        "    assert len(entries) == 20000 and entries[-1].key == 'layers.19999.weight'\n"
        "    r.raw_source('layers.5.weight')\n"
        "assert 'torch' not in sys.modules, 'listing imported torch'\n"
        "assert 'safetensors' not in sys.modules, 'listing imported safetensors'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
