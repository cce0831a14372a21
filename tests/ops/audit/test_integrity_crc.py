"""``audit``'s integrity check FAILs a ``torch.save`` file whose tensor bytes were damaged after
writing (a flipped bit on disk or in transfer): torch itself loads such a file without a word,
but every record carries the CRC-32 torch computed when it wrote it."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.audit.audit import audit_checkpoints  # noqa: E402


def _integrity(path: Path) -> tuple[str, str]:
    check = next(c for c in audit_checkpoints([str(path)]).checks if c.check == "integrity")
    return check.status, check.reason


def _flip_a_bit_of(path: Path, record_suffix: str) -> None:
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(record_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + 3] ^= 0x10
    path.write_bytes(bytes(data))


def test_damaged_tensor_bytes_fail(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(4)}, path)
    assert _integrity(path)[0] == "PASS"
    _flip_a_bit_of(path, "data/0")
    torch.load(path, weights_only=True)  # torch does not notice
    status, reason = _integrity(path)
    assert status == "FAIL"
    assert "data/0 fails the CRC-32" in reason
    assert not audit_checkpoints([str(path)]).ok


def test_files_written_without_crcs_pass(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.arange(64, dtype=torch.float32)}, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert _integrity(path)[0] == "PASS"
