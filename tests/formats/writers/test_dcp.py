"""The torch-free DCP writer: real ``torch.distributed.checkpoint`` reads what it writes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from ckpttools.formats.writers.dcp_metadata import DcpItem, dcp_metadata  # noqa: E402
from ckpttools.formats.dcp_dir import DcpReader  # noqa: E402
from ckpttools.formats.manifest import MANIFEST_KEY  # noqa: E402
from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402

DTYPES = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8",
          "int16", "int32", "int64", "uint8", "bool", "complex64"]


def _state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    model = {f"w.{d}": (torch.randn(3, 5, generator=g, dtype=torch.float64) * 40).to(
        getattr(torch, d)) for d in DTYPES if d not in ("bool", "complex64")}
    model.update({"flag": base > 0, "c": torch.complex(base, -base), "scalar": torch.tensor(2.5),
                  "empty": torch.empty(0, 3), "view.T": base.T, "ünï.name": base[1]})
    return {"model": model}


def _dcp_load(folder: Path, target: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True)


def _bits(t: Any) -> Any:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.fixture
def written(tmp_path: Path) -> Path:
    src = tmp_path / "src.pth"
    torch.save(_state(), src)
    out = tmp_path / "out.dcp"
    assert convert_checkpoint(str(src), str(out), to="dcp").ok
    return out


def test_dcp_load_reads_every_tensor_bit_for_bit(written: Path) -> None:
    state = _state()
    target = {"model": {k: torch.full_like(v.contiguous(), 0) for k, v in state["model"].items()},
              MANIFEST_KEY: ""}
    _dcp_load(written, target)
    for k, v in state["model"].items():
        got = target["model"][k]
        assert got.dtype == v.dtype and got.shape == v.shape, k
        assert torch.equal(_bits(got), _bits(v)), k
    assert '"model"' in target[MANIFEST_KEY]


def test_read_metadata_gives_dcp_classes(written: Path) -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, MetadataIndex,
                                                       TensorStorageMetadata)

    meta = dcp.FileSystemReader(str(written)).read_metadata()
    items = meta.state_dict_metadata
    assert isinstance(items[MANIFEST_KEY], BytesStorageMetadata)
    w = items["model.w.bfloat16"]
    assert isinstance(w, TensorStorageMetadata) and w.properties.dtype == torch.bfloat16
    assert w.size == torch.Size([3, 5]) and w.chunks[0].offsets == torch.Size([0, 0])
    assert w.properties.memory_format == torch.contiguous_format
    info = meta.storage_data[MetadataIndex("model.w.bfloat16", [0, 0])]
    assert isinstance(info, _StorageInfo) and info.relative_path == "__0_0.distcp"
    end = max(i.offset + i.length for i in meta.storage_data.values())
    assert end == (written / "__0_0.distcp").stat().st_size
    assert meta.planner_data["model.c"] == ("model.c",) and meta.version == "1.0.0"


def test_metadata_pickle_equals_torch_metadata() -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (BytesStorageMetadata,
                                                       ChunkStorageMetadata, Metadata,
                                                       MetadataIndex, StorageMeta,
                                                       TensorProperties, TensorStorageMetadata)

    items = [DcpItem("m", None, (), "f.distcp", 0, 10),
             DcpItem("a.b", "float8_e5m2", (2, 3), "f.distcp", 10, 99),
             DcpItem("s", "int64", (), "f.distcp", 109, 7)]
    size = torch.Size

    def tensor(dtype: Any, shape: tuple[int, ...]) -> TensorStorageMetadata:
        return TensorStorageMetadata(TensorProperties(dtype), size(shape),
                                     [ChunkStorageMetadata(size([0] * len(shape)), size(shape))])

    expected = Metadata(
        {"m": BytesStorageMetadata(), "a.b": tensor(torch.float8_e5m2, (2, 3)),
         "s": tensor(torch.int64, ())},
        planner_data={"m": ("m",), "a.b": ("a.b",), "s": ("s",)},
        storage_data={MetadataIndex("m"): _StorageInfo("f.distcp", 0, 10),
                      MetadataIndex("a.b", [0, 0], 0): _StorageInfo("f.distcp", 10, 99),
                      MetadataIndex("s", [], 0): _StorageInfo("f.distcp", 109, 7)},
        storage_meta=StorageMeta(save_id="x"), version="1.0.0")
    got = pickle.loads(dcp_metadata(items, save_id="x"))
    assert got == expected
    assert [k.index for k in got.storage_data] == [None, 0, 0]


def test_pth_to_dcp_and_back_with_verification_need_no_torch(tmp_path: Path) -> None:
    src = tmp_path / "a.pth"
    state = {"w": torch.randn(64, 32), "b": torch.zeros(3, dtype=torch.bfloat16), "epoch": 3}
    torch.save(state, src)
    code = ("import sys; from ckpttools.ops.convert.conversion import convert_checkpoint\n"
            "a, b, c = sys.argv[1:]\n"
            "assert convert_checkpoint(a, b, to='dcp').ok and convert_checkpoint(b, c).ok\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "a.dcp"),
                          str(tmp_path / "b.pth")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    target = {"w": torch.empty(64, 32), "b": torch.empty(3, dtype=torch.bfloat16)}
    _dcp_load(tmp_path / "a.dcp", target)
    assert torch.equal(target["w"], state["w"]) and torch.equal(target["b"], state["b"])
    back = torch.load(tmp_path / "b.pth", weights_only=True)
    assert back["epoch"] == 3 and torch.equal(back["w"], state["w"])


def test_adam_checkpoint_round_trips_through_dcp(tmp_path: Path) -> None:
    from tests.ops.convert.test_roundtrip import assert_same, training_state

    state = training_state()
    src, mid, back = tmp_path / "a.pth", tmp_path / "a.dcp", tmp_path / "b.pth"
    torch.save(state, src)
    assert convert_checkpoint(str(src), str(mid), to="dcp").ok
    assert convert_checkpoint(str(mid), str(back)).ok
    assert_same(state, torch.load(back, weights_only=True))


def test_verification_finds_a_changed_byte_in_dcp(tmp_path: Path) -> None:
    from ckpttools.ops.convert.conversion import write_output
    from ckpttools.ops.convert.source import open_source
    from ckpttools.ops.convert.verify import verify_output

    src, out = tmp_path / "a.pth", tmp_path / "o.dcp"
    torch.save({"w": torch.randn(8, 8), "n": torch.arange(4)}, src)
    out.mkdir()
    with open_source(str(src)) as source:
        write_output(str(out), "dcp", source, max_shard_size=None, on_progress=lambda n: None)
        assert verify_output(str(out), "dcp", source) == []
        with DcpReader(out) as reader:
            where = reader.raw_source("w")
        assert where is not None and where.length == 256
        with open(where.path, "r+b") as f:
            f.seek(where.offset + 5)
            b = f.read(1)
            f.seek(where.offset + 5)
            f.write(bytes([b[0] ^ 0xFF]))
        assert verify_output(str(out), "dcp", source) == ["w: tensor bytes differ from the source"]


def test_torch_written_dcp_converts_to_pth(make_checkpoint: Callable[..., Path],
                                            tmp_path: Path) -> None:
    state = {"m": {"w": torch.randn(3, 4), "n": torch.arange(5)}, "epoch": 4}
    back = tmp_path / "b.pth"
    assert convert_checkpoint(str(make_checkpoint("dcp", state)), str(back)).ok
    got = torch.load(back, weights_only=True)
    assert got["epoch"] == 4 and torch.equal(got["m"]["w"], state["m"]["w"])
    assert torch.equal(got["m"]["n"], state["m"]["n"])


def test_range_reader_on_a_torch_written_dcp(make_checkpoint: Callable[..., Path]) -> None:
    state = {"m": {"w": torch.randn(3, 4), "e": torch.empty(0)}, "epoch": 4}
    ckpt = make_checkpoint("dcp", state)
    with DcpReader(ckpt) as reader:
        assert reader.raw_source("epoch") is None and reader.tensor_meta("epoch") is None
        assert reader.tensor_meta("m.w") == ("float32", (3, 4))
        where = reader.raw_source("m.w")
        assert where is not None and where.length == 48
        with open(where.path, "rb") as f:
            f.seek(where.offset)
            assert f.read(where.length) == bytes(_bits(state["m"]["w"]).tolist())
        empty = reader.raw_source("m.e")
        assert empty is not None and empty.length == 0


@pytest.mark.parametrize("zip64", [False, True])
def test_items_with_raw_and_loaded_tensors_and_zip64(tmp_path: Path, zip64: bool) -> None:
    from ckpttools.formats.writers.bytecopy import TensorData
    from ckpttools.formats.writers.dcp import write_dcp
    from ckpttools.formats.torch_zip import TorchZipReader

    big, small = torch.randn(300_000), torch.arange(6, dtype=torch.int16).reshape(2, 3)
    torch.save({"big": big}, tmp_path / "s.pth")
    with TorchZipReader(tmp_path / "s.pth") as src:
        raw = src.raw_source("big")
    data = [TensorData("a.big", "float32", (300_000,), big.numel() * 4, raw=raw),
            TensorData("a.small", "int16", (2, 3), 12, load=lambda: small.T.contiguous().T)]
    out = tmp_path / "o"
    out.mkdir()
    write_dcp(str(out), data, '{"v": 1}', zip64=zip64)
    target = {"a": {"big": torch.empty(300_000), "small": torch.empty(2, 3, dtype=torch.int16)},
              MANIFEST_KEY: ""}
    _dcp_load(out, target)
    assert torch.equal(target["a"]["big"], big) and torch.equal(target["a"]["small"], small)
    assert target[MANIFEST_KEY] == '{"v": 1}'
    with DcpReader(out) as reader:
        assert reader.manifest() == '{"v": 1}'
        assert torch.equal(reader.load("a.small"), small)
        where = reader.raw_source("a.big")
        assert where is not None and where.length == big.numel() * 4


def test_cast_to_dcp_writes_loaded_tensors(tmp_path: Path) -> None:
    src, out = tmp_path / "a.pth", tmp_path / "a.dcp"
    state = {"w": torch.randn(4, 4), "n": torch.arange(3)}
    torch.save(state, src)
    result = convert_checkpoint(str(src), str(out), to="dcp", dtype="bf16")
    assert result.ok and result.cast == ("w",)
    target = {"w": torch.empty(4, 4, dtype=torch.bfloat16), "n": torch.empty(3, dtype=torch.int64)}
    _dcp_load(out, target)
    assert torch.equal(target["w"], state["w"].bfloat16()) and torch.equal(target["n"], state["n"])
