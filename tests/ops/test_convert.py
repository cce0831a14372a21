"""convert_checkpoint: key selection, casting, refusals, verification failures, writers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckpttools.errors import CkptError  # noqa: E402
from ckpttools.ops import convert as convert_mod  # noqa: E402
from ckpttools.ops.convert import convert_checkpoint, parse_size  # noqa: E402


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
    import ckpttools.ops.verify_output as vo

    monkeypatch.setattr(vo, "verify_safetensors", lambda *a, **k: ["w: bytes differ"])
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
