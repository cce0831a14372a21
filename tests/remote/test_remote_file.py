"""The byte-source layer itself: a URL read as a file or as bytes gives the file's bytes."""

from __future__ import annotations

import io
import random

import pytest

from ckpttools.formats import fileio, remote
from tests.remote.server import FileServer


@pytest.fixture
def data(served: FileServer) -> bytes:
    rng = random.Random(5)
    blob = bytes(rng.getrandbits(8) for _ in range(3_000_000)) + b"\nend-marker\n"
    (served.root / "blob.bin").write_bytes(blob)
    return blob


def test_random_reads_match_the_file(served: FileServer, data: bytes) -> None:
    rng = random.Random(7)
    direct = 0
    with fileio.open_binary(served.url("blob.bin")) as f:
        assert fileio.is_remote_file(f) and fileio.file_size(f) == len(data)
        for _ in range(200):
            start = rng.randrange(len(data))
            n = rng.choice([1, 30, 4096, 70_000, 300_000, 5_000_000])
            f.seek(start)
            assert f.read(n) == data[start:start + n]
            length = min(len(data), start + n) - start
            direct += length if length >= remote.DIRECT else 0
        f.seek(-11, io.SEEK_END)
        buf = bytearray(20)
        assert f.readinto(buf) == 11 and bytes(buf[:11]) == data[-11:]
        assert f.read() == b""
    # each block crossed the network once (the cache holds the whole file), small reads a
    # page or two, long reads directly
    assert served.log.bytes <= len(data) + direct + 200 * 2 * remote.PAGE


def test_bytes_view_indexes_slices_and_finds(served: FileServer, data: bytes) -> None:
    view = remote.RemoteBytes(served.url("blob.bin"))
    assert len(view) == len(data)
    assert view[0] == data[0] and view[-1] == data[-1] and view[1_500_000] == data[1_500_000]
    assert view[100:5000] == data[100:5000]
    assert view.find(b"end-marker") == data.find(b"end-marker")
    assert view.find(b"end-marker", 0, 1000) == -1
    with pytest.raises(IndexError):
        view[len(data)]


def test_several_ranges_in_flight_keep_their_order(served: FileServer, data: bytes) -> None:
    url = served.url("blob.bin")
    ranges = [(i, i + 250_000) for i in range(0, 2_500_000, 250_000)]
    assert list(remote.stream_ranges(url, ranges)) == [data[s:e] for s, e in ranges]
    assert remote.fetch_ranges(url, ranges[::-1]) == [data[s:e] for s, e in ranges[::-1]]


def test_sequential_reads_keep_ranges_in_flight(served: FileServer, data: bytes,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads in file order come from read-ahead ranges; a jump back restarts the window there
    and a jump forward skips what lies between instead of fetching it."""
    from ckpttools.formats import remote_sources

    monkeypatch.setattr(remote_sources, "AHEAD_BLOCK", 64 * 1024)
    url = served.url("blob.bin")
    spans = [(0, 10), (10, 200_000), (200_000, 200_001), (150_000, 400_000),
             (2_900_000, len(data))]
    served.log.reset()
    for start, end in spans:
        got = b"".join(bytes(p) for p in remote.read_sequential(url, start, end))
        assert got == data[start:end], (start, end)
    # read-ahead windows near the reads (how many of their ranges were sent before a jump
    # cancelled them depends on timing), never the 2.3 MB between them and the tail
    starts = [int(r.split("=")[1].split("-")[0]) for _, _, r in served.log.requests]
    assert not [s for s in starts if 700_000 <= s < 2_800_000], starts
    assert served.log.bytes < 1_600_000
