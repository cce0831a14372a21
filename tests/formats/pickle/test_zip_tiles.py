"""``zip_records.archive_problems`` reads the local headers of sound records in one loop
(``_plain_tiles``) when it has the archive's bytes: it must find the same problems and the same
data offsets as the record-by-record reading, on both corpora and on every byte mutation of a
torch zip's local headers and data descriptors."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch

from ckpttools.formats import zip_records as zr


def _problems(data: bytes, in_place: bool) -> Any:
    starts: dict[int, int] = {}
    try:
        found = zr.archive_problems(io.BytesIO(data), len(data), starts=starts,
                                    buf=data if in_place else None)
    except (zr.ZipError, ValueError) as e:
        return type(e).__name__, str(e)
    return found, starts


def _same(data: bytes) -> None:
    assert _problems(data, True) == _problems(data, False)


def test_corpora_find_the_same_problems(corpora: dict[str, Path]) -> None:
    zips = [p.read_bytes() for p in corpora.values() if p.read_bytes()[:4] == b"PK\x03\x04"]
    assert len(zips) > 20
    for data in zips:
        _same(data)


def test_every_header_mutation_finds_the_same_problems(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save({f"w{i}": torch.zeros(2) for i in range(6)}, path)
    data = path.read_bytes()
    rng = random.Random(20)
    entries, _ = zr.read_entries(io.BytesIO(data), len(data))
    spans = [(r.header_offset - 16, r.header_offset + 30 + len(r.name)) for r in entries[3:5]]
    checked = 0
    for start, end in spans:
        for at in range(start, end):
            for value in {0, 1, 8, 0x50, 0xFF, data[at] ^ 1, rng.randrange(256)}:
                _same(data[:at] + bytes([value]) + data[at + 1:])
                checked += 1
    assert checked > 300
    assert _problems(data, True)[0] == []
