"""``audit`` checks a torch zip's record CRC-32s on the finite pass's reads of the same bytes
(one pass over the tensor data, not two), and its rows stay those of a separate integrity pass:
a damaged record FAILs integrity with the first problem in directory order and skips the rest,
wherever the damage lies (a record the finite pass reads, one it does not, both)."""

from __future__ import annotations

import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckpttools.formats.registry import open_checkpoint  # noqa: E402
from ckpttools.ops.audit import audit as audit_mod  # noqa: E402
from ckpttools.ops.audit import finite  # noqa: E402
from ckpttools.ops.audit.audit import audit_checkpoints  # noqa: E402
from ckpttools.ops.audit.config import AuditConfig  # noqa: E402
from ckpttools.ops.audit.record_crcs import RecordCrcs  # noqa: E402


def _state() -> dict[str, torch.Tensor]:
    shared = torch.randn(64)
    return {"steps": torch.arange(40),  # data/0: an integer record the finite pass never reads
            "w": torch.randn(3, 1000),  # data/1: a whole record
            "head": shared[:16],  # data/2: a view of part of a record
            "emb": torch.randn(50, 8),  # data/3
            "tied": torch.randn(8, 8)}  # data/4, saved twice below


def _save(path: Path) -> Path:
    state = _state()
    state["tied_again"] = state["tied"]
    torch.save(state, path)
    return path


def _data_start(path: Path, record: str) -> int:
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(record))
    head = path.read_bytes()[info.header_offset:info.header_offset + 30]
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    return info.header_offset + 30 + name_len + extra_len


def _damage(path: Path, record: str, at: int = 5, value: bytes | None = None) -> None:
    data = bytearray(path.read_bytes())
    start = _data_start(path, record)
    if value is None:
        data[start + at] ^= 0x10
    else:
        data[start + at:start + at + len(value)] = value
    path.write_bytes(bytes(data))


def _rows(path: Path, **config: object) -> list[tuple[str, str, str]]:
    result = audit_checkpoints([str(path)], AuditConfig(**config))  # type: ignore[arg-type]
    return [(c.check, c.status, c.reason) for c in result.checks]


def _failed_rows(path: Path, rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The rows a separate integrity pass (CRC-32s read in directory order) gives."""
    problem = audit_mod._zip_records_complete(str(path))
    assert problem is not None
    return [("integrity", "FAIL", problem), rows[1]] + [
        (check, "SKIP", "not run: the file failed its integrity check") for check, *_ in rows[2:]]


@pytest.mark.parametrize("records", [["data/1"], ["data/0"], ["data/2"], ["data/4"],
                                     ["data/0", "data/3"], ["data/1", "data/3"]])
def test_a_damaged_record_fails_integrity_as_a_separate_pass_does(tmp_path: Path,
                                                                  records: list[str]) -> None:
    path = _save(tmp_path / "model.pt")
    clean = _rows(path)
    assert [status for _, status, _ in clean] == ["PASS", "PASS", "PASS"]
    for record in records:
        _damage(path, record)
    rows = _rows(path)
    assert rows == _failed_rows(path, clean)
    assert f"/{records[0]} fails the CRC-32" in rows[0][2]  # the first in the directory


def test_damage_that_reads_as_nan_is_an_integrity_failure_not_a_finite_one(tmp_path: Path) -> None:
    path = _save(tmp_path / "model.pt")
    _damage(path, "data/1", at=8, value=b"\xff\xff\xff\xff")
    with open_checkpoint(str(path)) as reader:
        assert finite.check_finite(reader).status == "FAIL"  # the bytes do hold a NaN now
    rows = _rows(path, require=("w",), max_size=1 << 30)
    assert [(check, status) for check, status, _ in rows] == [
        ("integrity", "FAIL"), ("safety", "PASS"), ("finite", "SKIP"), ("completeness", "SKIP"),
        ("policy", "SKIP")]
    assert "/data/1 fails the CRC-32" in rows[0][2]


def test_a_damaged_zip_named_safetensors_reports_the_damage_first(tmp_path: Path) -> None:
    path = _save(tmp_path / "model.safetensors")
    _damage(path, "data/3")
    assert _rows(path)[0] == ("integrity", "FAIL", audit_mod._zip_records_complete(str(path)))


def test_only_the_records_the_finite_pass_did_not_read_are_left(tmp_path: Path) -> None:
    path = _save(tmp_path / "model.pt")
    crcs = RecordCrcs(str(path))
    assert audit_mod._zip_records_complete(str(path), crcs) is None
    stored = {_data_start(path, f"data/{i}"): f"data/{i}" for i in range(5)}
    assert set(stored) <= set(crcs.pending)
    with open_checkpoint(str(path)) as reader:
        assert finite.check_finite(reader, record_crcs=crcs).status == "PASS"
    left = {stored.get(offset, "other") for offset in crcs.pending}
    # whole float records were CRC'd on the pass's own reads, the tied one once
    assert left == {"data/0", "data/2", "other"}
    assert not crcs.damaged
    assert crcs.check_rest() and not crcs.pending
    assert str(path) not in Path("/proc/self/maps").read_text()  # every window was unmapped


def test_slices_cover_every_window_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows and slices that do not divide the record: a flipped bit in the last bytes of a
    window, of a slice and of the record is seen."""
    monkeypatch.setattr(finite, "CHUNK_BYTES", (1 << 16) + 24)
    monkeypatch.setattr(finite, "SLICE_BYTES", 1 << 12)
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(100_003, dtype=torch.float64)}, path)
    length = 100_003 * 8
    for at in (0, (1 << 12) - 1, finite.CHUNK_BYTES - 1, finite.CHUNK_BYTES, length - 1):
        copy = tmp_path / f"damaged-{at}.pt"
        copy.write_bytes(path.read_bytes())
        _damage(copy, "data/0", at=at)
        crcs = RecordCrcs(str(copy))
        assert audit_mod._zip_records_complete(str(copy), crcs) is None
        with open_checkpoint(str(copy)) as reader:
            finite.check_finite(reader, record_crcs=crcs)
        assert crcs.damaged, at


def test_the_crc_reads_the_mapped_bytes_in_place(tmp_path: Path) -> None:
    """Memory stays bounded: a 16 MB record is CRC'd and checked without a copy of its bytes."""
    path = tmp_path / "big.pt"
    torch.save({"big": torch.randn(4 << 20)}, path)
    crcs = RecordCrcs(str(path))
    assert audit_mod._zip_records_complete(str(path), crcs) is None
    with open_checkpoint(str(path)) as reader:
        tracemalloc.start()
        try:
            assert finite.check_finite(reader, record_crcs=crcs).status == "PASS"
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert crcs.pending == {} or all(length < 4096 for length, _ in crcs.pending.values())
    assert peak < 1 << 20
