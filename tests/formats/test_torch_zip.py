"""TorchZipReader on real torch.save files: entries, values, safety, GPU locations, damage."""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttools.entries import ObjectEntry, TensorEntry, TensorRef
from ckpttools.errors import CkptError, CorruptCheckpointError, UnsafeCheckpointError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.formats.torch_zip import TorchZipReader
from ckpttools.keypaths import get_path
from tests.conftest import malicious_state


@dataclass
class RunConfig:
    lr: float = 0.01
    name: str = "run"


class AttributeDict(dict):  # type: ignore[type-arg]
    """Stands in for Lightning's AttributeDict."""


def training_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    base = torch.arange(24.0).reshape(4, 6)
    return {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "epoch": 3, "loss": 0.25,
        "extra": OrderedDict([("view", base[1:3, 2:]), ("t", base.t()), ("base", base)]),
        "param": torch.nn.Parameter(torch.ones(2)),
        "scalar": torch.tensor(1.5), "empty": torch.empty(0, 4),
        "dtypes": {str(d): torch.ones(3).to(d) for d in
                   (torch.bfloat16, torch.float8_e4m3fn, torch.complex64, torch.bool,
                    torch.int8, torch.int64, torch.uint16, torch.float16)},
        "keys": {"a.b": torch.zeros(1), "ünï": torch.ones(1)},
        "args": argparse.Namespace(lr=0.1, epochs=2),
        "config": RunConfig(),
        "hyper_parameters": AttributeDict(lr=0.3, layers=2),
    }


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return training_state()


@pytest.fixture
def ckpt(make_checkpoint: Callable[..., Path], state: dict[str, Any]) -> Path:
    return make_checkpoint("torch-zip", state)


def test_entries_and_values_match_torch_load(ckpt: Path, state: dict[str, Any]) -> None:
    with open_checkpoint(ckpt) as reader:
        assert isinstance(reader, TorchZipReader)
        tensors = reader.tensor_entries()
        assert len(tensors) >= 30
        for entry in tensors:
            expected = get_path(state, entry.key)
            got = reader.load(entry.key)
            assert (entry.dtype, entry.shape) == (str(expected.dtype)[6:], tuple(expected.shape))
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn
                               else got, expected.detach().view(torch.uint8)
                               if got.dtype == torch.float8_e4m3fn else expected.detach())
            assert entry.nbytes == expected.numel() * expected.element_size()
        keys = {e.key for e in reader.entries()}
        assert {"optimizer_state_dict.state.0.exp_avg", "keys.a.b", "keys.ünï",
                "optimizer_state_dict.param_groups.0.params"} <= keys


def test_objects_render_as_json_safe_fields(ckpt: Path) -> None:
    with open_checkpoint(ckpt) as reader:
        objects = {e.key: e for e in reader.object_entries()}
    assert objects["epoch"] == ObjectEntry("epoch", "int", 3)
    assert objects["args"].value == {"__class__": "argparse.Namespace", "lr": 0.1, "epochs": 2}
    assert objects["config"].value == {"__class__": f"{__name__}.RunConfig", "lr": 0.01,
                                       "name": "run"}
    assert objects["hyper_parameters"].value == {"__class__": f"{__name__}.AttributeDict",
                                                 "lr": 0.3, "layers": 2}
    assert objects["optimizer_state_dict.param_groups.0.params"].value == [0, 1, 2, 3]
    assert objects["optimizer_state_dict.param_groups.0.betas"].value == [0.9, 0.999]


def test_tree_shares_views_and_records_parameters(ckpt: Path) -> None:
    with open_checkpoint(ckpt) as reader:
        tree = reader.tree()
        assert tree["extra"]["view"] == TensorRef("extra.view")
        entries = {e.key: e for e in reader.tensor_entries()}
        assert entries["extra.view"].location == entries["extra.base"].location
        assert reader.placeholder("param").requires_grad
        assert reader.placeholder("extra.view").storage_offset == 8
        assert reader.raw_source("extra.t") is None  # not contiguous
        src = reader.raw_source("extra.base")
        assert src is not None and src.length == 96
        with open(src.path, "rb") as f:
            f.seek(src.offset)
            assert torch.frombuffer(bytearray(f.read(src.length)), dtype=torch.float32)[5] == 5


def test_records_are_found_as_torch_finds_them(tmp_path: Path) -> None:
    """The folder of the first entry, ``data.pkl`` matched case-insensitively (miniz); a
    renamed pickle is refused, as torch.load refuses it."""
    torch.save({"w": torch.ones(2)}, tmp_path / "weird-name.bin")
    src = tmp_path / "weird-name.bin"
    upper = tmp_path / "upper.pt"
    _rewrite(src, upper, lambda n, d: (n.replace("data.pkl", "DATA.PKL"), d))
    for path in (src, upper):
        assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
        with open_checkpoint(path) as reader:
            assert torch.equal(reader.load("w"), torch.ones(2))
    renamed = tmp_path / "renamed.pt"
    _rewrite(src, renamed, lambda n, d: (n.replace("data.pkl", "main.pkl"), d))
    with pytest.raises(RuntimeError):
        torch.load(renamed, weights_only=True)
    with pytest.raises(CorruptCheckpointError, match="without data.pkl"):
        open_checkpoint(renamed)


@pytest.mark.parametrize(("record", "value", "match"), [
    ("byteorder", b"middle", "byteorder"), ("version", b"99", "version"),
    ("version", b"x", "version")])
def test_records_torch_validates(tmp_path: Path, record: str, value: bytes, match: str) -> None:
    src = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, src)
    bad = tmp_path / "bad.pt"
    _rewrite(src, bad, lambda n, d: (n, value if n.endswith("/" + record) else d))
    with pytest.raises(Exception):
        torch.load(bad, weights_only=True)
    with pytest.raises(CorruptCheckpointError, match=match):
        open_checkpoint(bad)


@pytest.mark.parametrize("how", ["past-storage", "negative-size", "huge-stride"])
def test_views_torch_refuses(tmp_path: Path, how: str) -> None:
    src = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(4.0)}, src)
    new = {"past-storage": (8,), "negative-size": (-4,), "huge-stride": (4,)}[how]
    bad = tmp_path / "bad.pt"

    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if not name.endswith("data.pkl"):
            return name, data
        data = data.replace(b"K\x04\x85", pickle.dumps(new, 2)[2:-1], 1)
        if how == "huge-stride":
            data = data.replace(b"K\x01\x85", b"J\x00\x00\x00\x10\x85", 1)
        return name, data

    _rewrite(src, bad, change)
    with pytest.raises(Exception):
        torch.load(bad, weights_only=True)
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(bad)


def _rewrite(src: Path, dest: Path, change: Callable[[str, bytes], tuple[str, bytes] | None]
             ) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            changed = change(name, zin.read(name))
            if changed is not None:
                zout.writestr(changed[0], changed[1])


def test_gpu_saved_storages_read_on_cpu(tmp_path: Path) -> None:
    """Rewrites data.pkl so storages claim ``cuda:0`` (how a GPU-saved file looks)."""
    torch.save({"w": torch.arange(4.0)}, tmp_path / "cpu.pth")
    gpu = tmp_path / "gpu.pth"
    cuda = b"X\x06\x00\x00\x00cuda:0"
    _rewrite(tmp_path / "cpu.pth", gpu, lambda n, d: (n, d.replace(b"X\x03\x00\x00\x00cpu",
                                                                   cuda)))
    assert torch.equal(torch.load(gpu, map_location="cpu", weights_only=True)["w"],
                       torch.arange(4.0))
    with open_checkpoint(gpu) as reader:
        (entry,) = reader.tensor_entries()
        assert entry.device == "cuda:0"
        assert torch.equal(reader.load("w"), torch.arange(4.0))


def test_malicious_pickle_is_flagged_and_never_run(tmp_path: Path, canary: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save(malicious_state(canary), path)
    with open_checkpoint(path) as reader:
        unsafe = [g.qualname for g in reader.pickle_globals() if g.safety == "unsafe"]
        assert unsafe in (["posix.system"], ["os.system"])
        assert torch.equal(reader.load("weight"), torch.zeros(2, 2))
        assert reader.object_entries()[0].type_name == unsafe[0]


def test_full_load_without_trust_names_the_globals(tmp_path: Path) -> None:
    path = tmp_path / "q.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated
        q = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    torch.save({"q": q, "ns": argparse.Namespace(a=1)}, path)
    with open_checkpoint(path) as reader, pytest.raises(UnsafeCheckpointError,
                                                        match="argparse.Namespace.*--trust"):
        reader.load("q")
    with open_checkpoint(path, trust=True) as reader:
        assert torch.equal(reader.load("q").dequantize(), q.dequantize())


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how.startswith("truncate"):
        path.write_bytes(data[: int(len(data) * float(how.split(":")[1]))])
    elif how == "crc":
        at = data.index(b"collections")
        path.write_bytes(data[:at] + b"C" + data[at + 1:])
    elif how == "garbage-pickle":
        _rewrite_in_place(path, lambda n, d: (n, b"\x80\x02garbage" if n.endswith(".pkl") else d))
    elif how == "missing-record":
        _rewrite_in_place(path, lambda n, d: None if n.endswith("data/0") else (n, d))
    elif how == "short-record":
        _rewrite_in_place(path, lambda n, d: (n, d[:4]) if n.endswith("data/0") else (n, d))


def _rewrite_in_place(path: Path, change: Callable[[str, bytes], tuple[str, bytes] | None]
                      ) -> None:
    tmp = path.with_suffix(".tmp")
    _rewrite(path, tmp, change)
    tmp.replace(path)


DAMAGE = [("truncate:0.0", CorruptCheckpointError, "empty"),
          ("truncate:0.05", CorruptCheckpointError, "truncated"),
          ("truncate:0.5", CorruptCheckpointError, "truncated"),
          ("truncate:0.999", CorruptCheckpointError, "truncated"),
          ("crc", CorruptCheckpointError, "CRC"),
          ("garbage-pickle", CorruptCheckpointError, "malformed pickle"),
          ("missing-record", CorruptCheckpointError, "data/0 is missing"),
          ("short-record", CorruptCheckpointError, "holds 4 bytes")]


@pytest.mark.parametrize(("how", "error", "fragment"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_files_raise_one_line(tmp_path: Path, how: str, error: type[CkptError],
                                      fragment: str) -> None:
    path = tmp_path / "model.pth"
    torch.save({"w": torch.ones(64), "epoch": 1}, path)
    _damage(path, how)
    with pytest.raises(error, match=fragment) as info:
        open_checkpoint(path, format=None).entries()
    assert "model.pth" in str(info.value) and "\n" not in str(info.value)


def test_listing_does_not_import_torch(ckpt: Path) -> None:
    code = ("import sys; from ckpttools.formats.registry import open_checkpoint; "
            f"r = open_checkpoint({str(ckpt)!r}); r.entries(); r.tree(); r.pickle_globals(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tensor_entry_fields(ckpt: Path) -> None:
    with open_checkpoint(ckpt) as reader:
        entry = next(e for e in reader.tensor_entries() if e.key == "scalar")
    assert entry == TensorEntry("scalar", "float32", (), 4, entry.location, "cpu")
    assert entry.location.endswith(f"/data/{reader.placeholder('scalar').storage_key}")


def test_shared_references_are_not_expanded(tmp_path: Path) -> None:
    """A DAG of shared lists doubles per level: 2**40 values from a 2 KB file."""
    node: list[object] = [1]
    for _ in range(40):
        node = [node, node]
    path = tmp_path / "dag.pt"
    torch.save({"w": torch.zeros(1), "dag": node}, path)
    with pytest.raises(CorruptCheckpointError, match="shared references"):
        open_checkpoint(path)


def test_deep_nesting_and_big_integers_are_read(tmp_path: Path) -> None:
    import sys

    nested: dict[str, object] = {"w": torch.zeros(1)}
    for _ in range(600):
        nested = {"x": nested}
    path = tmp_path / "deep.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # torch.save itself recurses per level
    try:
        torch.save({"deep": nested, "big": 10 ** 5000}, path)
    finally:
        sys.setrecursionlimit(limit)
    with open_checkpoint(path) as reader:
        assert len(reader.tensor_entries()) == 1
        assert any("int of" in str(e.value) for e in reader.entries() if e.key == "big")


def test_compressed_records_are_read_through_zipfile(tmp_path: Path) -> None:
    """An archive re-zipped with deflate (not torch's form) is still listed and loaded; its
    records are read through ``zipfile``, which only such files import."""
    src, dest = tmp_path / "m.pth", tmp_path / "deflated.pth"
    state = {"w": torch.randn(3, 4), "steps": torch.arange(5)}
    torch.save(state, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    with zipfile.ZipFile(dest) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    with open_checkpoint(dest) as reader:
        assert [(e.key, e.dtype, e.shape) for e in reader.tensor_entries()] == [
            ("w", "float32", (3, 4)), ("steps", "int64", (5,))]
        assert reader.raw_source("w") is None  # compressed bytes are not a raw range
        for key, value in state.items():
            assert torch.equal(reader.load(key), value)
