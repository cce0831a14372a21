"""convert_checkpoint: key selection, casting, refusals, verification failures, writers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckpttools.errors import CkptError  # noqa: E402
from ckpttools.ops.convert import conversion as convert_mod  # noqa: E402
from ckpttools.ops.convert.conversion import convert_checkpoint, parse_size  # noqa: E402


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": {"w": torch.randn(3, 4), "n": torch.arange(3)},
                "epoch": 2}, path)
    return path


def test_key_selects_state_dict_with_natural_names(ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "m.safetensors"
    assert convert_checkpoint(str(ckpt), str(out), key="model_state_dict").ok
    assert sorted(load_file(str(out))) == ["n", "w"]


def test_dtype_casts_floating_only(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pth"
    result = convert_checkpoint(str(ckpt), str(out), dtype="bf16")
    assert result.ok and result.cast == ("model_state_dict.w",)
    back = torch.load(out, weights_only=True)
    src = torch.load(ckpt, weights_only=True)
    assert back["model_state_dict"]["w"].dtype == torch.bfloat16
    assert torch.equal(back["model_state_dict"]["w"], src["model_state_dict"]["w"].bfloat16())
    assert back["model_state_dict"]["n"].dtype == torch.int64 and back["epoch"] == 2


def test_refuses_overwrite_and_same_path(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep")
    with pytest.raises(CkptError, match="already exists; pass --force"):
        convert_checkpoint(str(ckpt), str(out))
    assert out.read_bytes() == b"keep"
    assert convert_checkpoint(str(ckpt), str(out), force=True).ok
    with pytest.raises(CkptError, match="destination is the source"):
        convert_checkpoint(str(ckpt), str(ckpt), to="pth", force=True)


def test_unrepresentable_value_names_key(tmp_path: Path) -> None:
    src = tmp_path / "a.pth"
    torch.save({"w": torch.ones(1), "opt": {"cfg": torch.nn.Identity()}}, src)
    with pytest.raises(CkptError, match=r"^opt\.cfg: "):
        convert_checkpoint(str(src), str(tmp_path / "a.safetensors"), trust=True)
    assert not (tmp_path / "a.safetensors").exists()
    r = convert_checkpoint(str(src), str(tmp_path / "a.safetensors"), trust=True,
                           drop_unrepresentable=True)
    assert r.ok and r.dropped == ("opt.cfg",)


def test_failed_verification_removes_output(ckpt: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpttools.ops.convert.verify as vo

    monkeypatch.setattr(vo, "verify_output", lambda *a, **k: ["w: bytes differ"])
    out = tmp_path / "m.safetensors"
    result = convert_checkpoint(str(ckpt), str(out))
    assert not result.ok and result.mismatches == ("w: bytes differ",)
    assert list(tmp_path.iterdir()) == [ckpt]


def test_no_disk_space_is_a_clear_error(ckpt: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setattr(convert_mod.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10, 10, 0))  # type: ignore[attr-defined]
    with pytest.raises(CkptError, match="not enough free disk space"):
        convert_checkpoint(str(ckpt), str(tmp_path / "m.safetensors"))


def test_torch_zip_writer_aligns_records(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pth"
    assert convert_checkpoint(str(ckpt), str(out)).ok
    with open(out, "rb") as f, zipfile.ZipFile(f) as zf:
        names = [i.filename for i in zf.infolist()]
        assert names[:4] == ["archive/data.pkl", "archive/.format_version",
                             "archive/.storage_alignment", "archive/byteorder"]
        assert names[-2:] == ["archive/version", "archive/.data/serialization_id"]
        assert zf.testzip() is None  # CRCs are right
        for info in zf.infolist():
            f.seek(info.header_offset + 26)
            n, e = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
            if "/data/" in info.filename:
                assert (info.header_offset + 30 + n + e) % 64 == 0


@pytest.mark.parametrize("text,value", [("2GB", 2 * 10**9), ("500MB", 5 * 10**8),
                                        ("1GiB", 2**30), ("123", 123)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_bad_size_and_format(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CkptError, match="not a size"):
        parse_size("lots")
    with pytest.raises(CkptError, match="cannot tell the output format"):
        convert_checkpoint(str(ckpt), str(tmp_path / "x.data"))


def _raw_storages(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> list:
    """Write tensors' bytes into one blob; TensorData naming each tensor's byte range."""
    from ckpttools.entries import RawSource
    from ckpttools.formats.writers.bytecopy import TensorData

    blob = tmp_path / "blob.bin"
    out, pos = [], 0
    with open(blob, "wb") as f:
        f.write(b"x" * 13)  # ranges start at odd offsets, as inside a real file
        pos = 13
        for key, t in tensors.items():
            data = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() \
                if t.numel() else b""
            f.write(data)
            out.append(TensorData(key, str(t.dtype).removeprefix("torch."), (len(data),),
                                  len(data), raw=RawSource(str(blob), pos, len(data))))
            pos += len(data)
    return out


@pytest.mark.parametrize("zip64", [False, True], ids=["zip32", "zip64"])
def test_torch_zip_writer_copies_large_storages_with_crcs(tmp_path: Path, zip64: bool) -> None:
    from ckpttools.formats.writers.bytecopy import CHUNK, TensorData
    from ckpttools.formats.writers.torch_zip import TensorSlot, write_torch_zip

    big = torch.randn(CHUNK // 4 * 2 + 123)  # three copy chunks, the last one partial
    small, empty = torch.arange(5, dtype=torch.int16), torch.empty(0)
    loaded = torch.randn(CHUNK // 4 + 7, dtype=torch.float64)  # written from memory
    raw = _raw_storages(tmp_path, {"0": big, "1": small, "2": empty})
    storages = [*raw, TensorData("3", "uint8", (loaded.numel() * 8,), loaded.numel() * 8,
                                 load=lambda: loaded.view(torch.uint8))]
    obj = {"big": TensorSlot("0", "float32", big.numel(), 0, tuple(big.shape), (1,)),
           "small": TensorSlot("1", "int16", 5, 0, (5,), (1,)),
           "empty": TensorSlot("2", "float32", 0, 0, (0,), (1,)),
           "view": TensorSlot("0", "float32", big.numel(), 10, (4, 3), (1, 4)),
           "loaded": TensorSlot("3", "float64", loaded.numel(), 0, (loaded.numel(),), (1,))}
    out = tmp_path / "out.pth"
    seen: list[int] = []
    placed = write_torch_zip(str(out), obj, storages, on_progress=seen.append, zip64=zip64)
    assert sum(seen) == sum(s.nbytes for s in storages)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None  # every record's CRC-32 is right
        assert (zf.getinfo("archive/data/0").file_size == big.numel() * 4)
    for key, where in placed.items():
        assert where.offset % 64 == 0, key
    back = torch.load(out, weights_only=True)
    mapped = torch.load(out, weights_only=True, mmap=True)
    for got in (back, mapped):
        assert torch.equal(got["big"], big) and torch.equal(got["small"], small)
        assert torch.equal(got["loaded"], loaded) and got["empty"].shape == (0,)
        assert torch.equal(got["view"], big[10:22].view(3, 4).t())
        assert got["view"].untyped_storage().data_ptr() == got["big"].untyped_storage().data_ptr()


def test_torch_zip_reader_reads_written_zip64(tmp_path: Path) -> None:
    from ckpttools.formats.torch_zip import TorchZipReader
    from ckpttools.formats.writers.torch_zip import TensorSlot, write_torch_zip

    t = torch.arange(100, dtype=torch.int64)
    out = tmp_path / "z.pth"
    write_torch_zip(str(out), {"t": TensorSlot("0", "int64", 100, 0, (100,), (1,))},
                    _raw_storages(tmp_path, {"0": t}), zip64=True)
    with TorchZipReader(str(out)) as reader:
        assert torch.equal(reader.load("t"), t)
        raw = reader.raw_source("t")
        assert raw is not None and raw.length == 800


def test_truncated_raw_source_is_an_error(tmp_path: Path) -> None:
    from ckpttools.entries import RawSource
    from ckpttools.errors import CorruptCheckpointError
    from ckpttools.formats.writers.bytecopy import CHUNK, TensorData
    from ckpttools.formats.writers.torch_zip import TensorSlot, write_torch_zip

    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    n = 2 * CHUNK
    data = TensorData("0", "uint8", (n,), n, raw=RawSource(str(tmp_path / "short.bin"), 0, n))
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        write_torch_zip(str(tmp_path / "o.pth"),
                        {"t": TensorSlot("0", "uint8", n, 0, (n,), (1,))}, [data])


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("target", ["pth", "safetensors"])
def test_verification_finds_a_changed_byte(ckpt: Path, tmp_path: Path, target: str) -> None:
    from ckpttools.ops.convert.conversion import output_manifest, write_output
    from ckpttools.ops.convert.source import open_source
    from ckpttools.ops.convert.verify import verify_output

    out = tmp_path / f"m.{target}"
    with open_source(str(ckpt)) as source:
        write_output(str(out), target, source, max_shard_size=None, on_progress=lambda n: None)
        assert verify_output(str(out), target, source) == []
        if target == "pth":
            from ckpttools.formats.torch_zip import TorchZipReader

            with TorchZipReader(str(out)) as reader:
                where = reader.raw_source("model_state_dict.w")
        else:
            from ckpttools.formats.safetensors_file import SafetensorsReader

            with SafetensorsReader(str(out)) as reader:
                where = reader.raw_source("model_state_dict.w")
        assert where is not None
        _flip_byte(out, where.offset + 5)
        assert verify_output(str(out), target, source) == \
            ["model_state_dict.w: tensor bytes differ from the source"]
        assert output_manifest(source).tensors


def test_verified_conversions_between_pth_and_safetensors_need_no_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    src = tmp_path / "a.pth"
    torch.save({"w": torch.randn(64, 32), "b": torch.zeros(3, dtype=torch.bfloat16),
                "epoch": 3}, src)
    code = ("import sys; from ckpttools.ops.convert.conversion import convert_checkpoint\n"
            "a, b, c = sys.argv[1:]\n"
            "assert convert_checkpoint(a, b).ok and convert_checkpoint(b, c).ok\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "a.safetensors"),
                          str(tmp_path / "b.pth")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    back = torch.load(tmp_path / "b.pth", weights_only=True)
    assert back["epoch"] == 3 and torch.equal(back["w"], torch.load(src)["w"])


def test_plain_safetensors_tensors_keep_their_own_storages(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64),
             "c": torch.empty(0)}
    save_file(state, str(tmp_path / "x.safetensors"))
    assert convert_checkpoint(str(tmp_path / "x.safetensors"), str(tmp_path / "y.pth")).ok
    back = torch.load(tmp_path / "y.pth", weights_only=True)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_large_storages_round_trip_through_the_kernel_copy(tmp_path: Path) -> None:
    from ckpttools.formats.writers.bytecopy import CHUNK

    big = torch.randn(CHUNK // 4 * 2 + 5)  # spans three copy chunks
    state = {"big": big, "half": big[: big.numel() // 2], "mid": torch.randn(70_000)}
    torch.save(state, tmp_path / "a.pth")
    assert convert_checkpoint(str(tmp_path / "a.pth"), str(tmp_path / "a.safetensors")).ok
    assert convert_checkpoint(str(tmp_path / "a.safetensors"), str(tmp_path / "b.pth")).ok
    with zipfile.ZipFile(tmp_path / "b.pth") as zf:
        assert zf.testzip() is None
    back = torch.load(tmp_path / "b.pth", weights_only=True, mmap=True)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert back["half"].untyped_storage().data_ptr() == back["big"].untyped_storage().data_ptr()


def test_ranges_equal_compares_every_chunk(tmp_path: Path) -> None:
    from ckpttools.entries import RawSource
    from ckpttools.formats.writers.bytecopy import CHUNK, SourceFiles, ranges_equal

    n = 2 * CHUNK + 11
    data = bytes(range(256)) * (n // 256 + 1)
    (tmp_path / "a").write_bytes(b"--" + data[:n])
    (tmp_path / "b").write_bytes(data[:n - 1] + b"\x00")  # differs in the last, short chunk
    files = SourceFiles()
    try:
        a = RawSource(str(tmp_path / "a"), 2, n)
        assert ranges_equal(files, a, RawSource(str(tmp_path / "a"), 2, n))
        assert not ranges_equal(files, a, RawSource(str(tmp_path / "b"), 0, n))
        assert ranges_equal(files, RawSource(str(tmp_path / "a"), 2, n - 1),
                            RawSource(str(tmp_path / "b"), 0, n - 1))
        assert not ranges_equal(files, a, RawSource(str(tmp_path / "a"), 3, n))  # runs past
    finally:
        files.close()
