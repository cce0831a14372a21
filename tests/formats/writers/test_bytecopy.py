"""The byte-copy helpers the writers and verification share: CRC-32 of a byte range read in
chunks, kernel copies that hand each chunk to the disk as they go."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from ckpttools.entries import RawSource
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.writers.bytecopy import (CHUNK, READ_CHUNK, SourceFiles, copy_raw,
                                                crc_of_range, write_behind)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, bytes]:
    body = os.urandom(CHUNK + 3 * READ_CHUNK + 17)  # spans copy chunks and read chunks
    path = tmp_path / "src"
    path.write_bytes(b"head" + body)
    return path, body


def test_crc_of_range_is_zlibs_over_every_read_chunk(data: tuple[Path, bytes]) -> None:
    path, body = data
    files = SourceFiles()
    try:
        assert crc_of_range(files, RawSource(str(path), 4, len(body))) == zlib.crc32(body)
        assert crc_of_range(files, RawSource(str(path), 5, 9)) == zlib.crc32(body[1:10])
        with pytest.raises(CorruptCheckpointError, match="truncated"):
            crc_of_range(files, RawSource(str(path), 5, len(body)))
    finally:
        files.close()


@pytest.mark.parametrize("crc", [False, True])
def test_copy_with_write_behind_keeps_every_byte(data: tuple[Path, bytes], tmp_path: Path,
                                                 crc: bool) -> None:
    path, body = data
    files = SourceFiles()
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(out, b"x" * 7)  # an unaligned start, as after a header
        value = copy_raw(files, RawSource(str(path), 4, len(body)), out, crc=crc)
    finally:
        os.close(out)
        files.close()
    assert (tmp_path / "out").read_bytes() == b"x" * 7 + body
    assert value == (zlib.crc32(body) if crc else 0)


def test_write_behind_where_it_cannot_is_harmless() -> None:
    read, write = os.pipe()  # sync_file_range refuses a pipe
    try:
        os.write(write, b"abc")
        write_behind(write, 3)
        assert os.read(read, 3) == b"abc"
    finally:
        os.close(read)
        os.close(write)
