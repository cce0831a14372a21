"""``audit`` of a ``.pth`` URL does not read every record for its CRC-32 (it would fetch the whole
file): the integrity PASS says so instead of passing a damaged file as checked."""

from __future__ import annotations

import struct
import zipfile

import torch

from ckpttools.ops.audit.audit import audit_checkpoints
from tests.remote.server import FileServer


def test_url_integrity_says_crcs_are_not_read(served: FileServer) -> None:
    path = served.root / "model.pth"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, path)
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + 3] ^= 0x10  # damaged, CRC unchanged
    path.write_bytes(bytes(data))
    check = next(c for c in audit_checkpoints([served.url("model.pth")]).checks
                 if c.check == "integrity")
    assert check.status == "PASS"
    assert check.reason.endswith("; record CRC-32s not read over a URL")
