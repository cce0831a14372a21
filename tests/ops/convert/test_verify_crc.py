"""Verification compares tensor bytes by CRC-32: the CRCs known when copying (the source zip's
records, or computed while copying) against a CRC of the output read back after the whole
output is written. A byte of the output changed after the copy, before verification, is caught
by that CRC; only that tensor is then compared in full, and the conversion fails naming it."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ckpttools.formats.registry import open_checkpoint  # noqa: E402
from ckpttools.ops.convert import conversion, verify  # noqa: E402
from ckpttools.ops.convert.source import Source, open_source  # noqa: E402

TARGETS = {"pth": ("pth", None), "safetensors": ("safetensors", None),
           "sharded": ("safetensors", "1MB"), "dcp": ("dcp", None)}
# "big" is read back on the verification's worker threads, "small" inline (<= 256 KiB)
KEYS = ["model.big", "model.small"]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = OrderedDict(big=torch.randn(300_000), small=torch.randn(7, 3),
                        other=torch.randn(200_000))
    path = tmp_path / "src.pth"
    torch.save({"model": model, "epoch": 2}, path)
    return path


@pytest.fixture
def compared_in_full(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the output tensors verification compared in full with the source."""
    names: list[str] = []
    real = verify._same_bytes

    def spy(t: Any, reader: Any, key: str, files: Any) -> bool:
        names.append(key)
        return real(t, reader, key, files)

    monkeypatch.setattr(verify, "_same_bytes", spy)
    return names


def _flip_after_writing(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """Make the conversion change one byte of ``key`` in its output once everything is
    written (a disk or page-cache fault after the copy, before verification)."""
    real = conversion.write_output

    def write_then_flip(tmp: str, target: str, source: Source, **kw: Any) -> Any:
        files = real(tmp, target, source, **kw)
        with open_checkpoint(tmp) as reader:
            where = reader.raw_source(key)
        assert where is not None
        with open(where.path, "r+b") as f:
            f.seek(where.offset + where.length // 2)
            byte = f.read(1)
            f.seek(where.offset + where.length // 2)
            f.write(bytes([byte[0] ^ 0x40]))
        return files

    monkeypatch.setattr(conversion, "write_output", write_then_flip)


def _out(tmp_path: Path, target: str) -> Path:
    return tmp_path / ("out.pth" if target == "pth" else f"out.{target}")


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_clean_conversion_is_checked_by_crc_alone(src: Path, tmp_path: Path, target: str,
                                                    compared_in_full: list[str]) -> None:
    to, shard = TARGETS[target]
    out = _out(tmp_path, target)
    result = conversion.convert_checkpoint(str(src), str(out), to=to, max_shard_size=shard)
    assert result.ok and result.verified
    assert compared_in_full == []  # every tensor was copied as a byte range with a known CRC
    with open_checkpoint(out) as reader:
        assert torch.equal(reader.load("model.big"), torch.load(src)["model"]["big"])


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_a_byte_changed_after_the_copy_fails_the_crc(
        src: Path, tmp_path: Path, target: str, key: str, compared_in_full: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    to, shard = TARGETS[target]
    _flip_after_writing(monkeypatch, key)
    out = _out(tmp_path, target)
    result = conversion.convert_checkpoint(str(src), str(out), to=to, max_shard_size=shard)
    assert result.mismatches == (f"{key}: tensor bytes differ from the source",)
    assert compared_in_full == [key]  # the CRC picked it out; nothing else was read twice
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src.pth"]


def test_cli_reports_the_changed_tensor_and_exits_1(src: Path, tmp_path: Path, runner: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpttools.cli.main import cli

    _flip_after_writing(monkeypatch, "model.other")
    out = tmp_path / "out.safetensors"
    result = runner.invoke(cli, ["convert", str(src), str(out)])
    assert result.exit_code == 1
    assert "model.other: tensor bytes differ from the source" in result.stdout
    assert not out.exists()


def test_a_wrong_crc_is_not_taken_on_trust(src: Path, tmp_path: Path,
                                          compared_in_full: list[str]) -> None:
    """A CRC that does not match the output sends the tensor to a full comparison: the check
    compares the CRC it reads back, it does not assume the copy went right."""
    crcs: dict[str, int] = {}
    out = tmp_path / "out.safetensors"
    with open_source(str(src)) as source:
        conversion.write_output(str(out), "safetensors", source, max_shard_size=None,
                                on_progress=lambda n: None, crcs=crcs)
        assert set(crcs) == {"model.big", "model.small", "model.other"}
        crcs["model.big"] ^= 1
        problems = verify.verify_output(str(out), "safetensors", source, crcs=crcs)
    assert compared_in_full == ["model.big"]
    assert problems == ["model.big: the source's bytes fail the CRC-32 its zip records; "
                        "the source is damaged"]


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_source_failing_its_own_crc_is_named_damaged(src: Path, tmp_path: Path,
                                                       target: str) -> None:
    """The writers reuse the CRC-32 the source's zip records instead of computing one; a
    source whose bytes no longer match that record is told apart from a bad copy."""
    with open_checkpoint(src) as reader:
        where = reader.raw_source("model.big")
    assert where is not None
    with open(src, "r+b") as f:  # change a byte of the storage, not its recorded CRC-32
        f.seek(where.offset + 5)
        byte = f.read(1)
        f.seek(where.offset + 5)
        f.write(bytes([byte[0] ^ 0x01]))
    to, shard = TARGETS[target]
    out = _out(tmp_path, target)
    result = conversion.convert_checkpoint(str(src), str(out), to=to, max_shard_size=shard)
    assert result.mismatches == ("model.big: the source's bytes fail the CRC-32 its zip "
                                 "records; the source is damaged",)
    assert not out.exists()
