"""The archive checks of ``scan``/``inspect`` over a URL fetch every record's local header in
one multi-range request, and fall back to single ranges (never reading a whole-file answer)
when the server does not answer in parts; s3 takes single ranges. Real ``torch.save`` files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.formats import remote, remote_multi, zip_records
from tests.remote.conftest import upload
from tests.remote.server import BOUNDARY, FileServer

MB = 1 << 20
RECORDS = 48  # tensors of 256 KB: their local headers lie far apart, past the first blocks


@pytest.fixture
def spread(served: FileServer) -> Path:
    g = torch.Generator().manual_seed(3)
    state = {f"layers.{i}.weight": torch.randn(256, 256, generator=g) for i in range(RECORDS)}
    path = served.root / "spread.pth"
    torch.save({"model": state, "step": 11}, path)
    return path


def _pickle_size(path: Path) -> int:
    with open(path, "rb") as f:
        records = zip_records.read_directory(f, path.stat().st_size)
    return next(r.file_size for n, r in records.items() if n.endswith("data.pkl"))


def _multi_requests(served: FileServer) -> int:
    return sum(1 for _, _, rng in served.log.requests if rng and "," in rng)


@pytest.mark.parametrize("command", ["scan", "inspect"])
def test_archive_checks_take_one_multirange_request(runner: CliRunner, served: FileServer,
                                                    spread: Path, command: str) -> None:
    url = served.url(spread.name)
    local = runner.invoke(cli, [command, "--format", "json", str(spread)])
    remote.COUNTERS.reset()
    r = runner.invoke(cli, [command, "--format", "json", url])
    assert r.exit_code == local.exit_code == 0, r.stderr
    assert json.loads(r.stdout).keys() == json.loads(local.stdout).keys()
    assert len(served.log.requests) <= 4, served.log.requests
    assert _multi_requests(served) == 1
    assert served.log.bytes <= MB + _pickle_size(spread)
    assert remote.COUNTERS.requests == len(served.log.requests)


@pytest.mark.parametrize("answer", ["whole", "span"])
def test_server_without_multirange_gets_single_ranges(runner: CliRunner, served: FileServer,
                                                      spread: Path, answer: str) -> None:
    """A 200 with the whole file, or one 206 range over all of them, is dropped after its
    headers; the windows then go as single ranges, the verdict the same."""
    served.behaviour.multi = answer
    url = served.url(spread.name)
    r = runner.invoke(cli, ["scan", url])
    assert r.exit_code == 0, r.stderr
    assert "safe" in r.stdout
    assert _multi_requests(served) == 1  # asked once, then never again for this file
    assert len(served.log.requests) <= 3 + RECORDS + 2
    # the client read none of the refused answer's body (the server may have pushed some
    # into the socket before the connection closed)
    assert remote.COUNTERS.bytes <= MB + _pickle_size(spread)


def test_multirange_parts_are_read_by_length_not_boundary(served: FileServer, spread: Path) -> None:
    """A record whose bytes hold the boundary string is still cut by Content-Range."""
    data = spread.read_bytes()
    trap = data.find(b"PK\x03\x04", 1 << 16)
    url = served.url(spread.name)
    blob = remote.blob(url)
    spans = [(trap, trap + 40), (len(data) - 300, len(data) - 200)]
    assert blob.source.fetch_multi([spans]) == [[data[s:e] for s, e in spans]]
    body = f"\r\n--{BOUNDARY}\r\nContent-Range: bytes 0-19/99\r\n\r\n".encode() + \
        f"--{BOUNDARY}\r\n\r\nxx".encode()[:20] + f"\r\n--{BOUNDARY}--\r\n".encode()
    parts = remote_multi.parse_parts(f'multipart/byteranges; boundary="{BOUNDARY}"', None, body)
    assert parts == {0: f"--{BOUNDARY}\r\n\r\nxx".encode()[:20]}


def test_hostile_archives_flagged_from_single_ranges(runner: CliRunner, served: FileServer,
                                                    tmp_path: Path) -> None:
    """Archives zip readers read differently are flagged over a URL when the windows come
    singly too, as they are on disk (in parts: test_http's test of the same families)."""
    from tests.hostile_corpus import zip_families

    served.behaviour.multi = "whole"
    for name, path in zip_families(served.root, tmp_path / "canary").items():
        local = runner.invoke(cli, ["scan", str(path)])
        remote.clear()
        r = runner.invoke(cli, ["scan", served.url(path.name)])
        assert local.exit_code != 0, name
        assert r.exit_code == local.exit_code, (name, r.stdout, r.stderr)
    assert not (tmp_path / "canary").exists()


def test_s3_archive_checks_by_single_ranges(runner: CliRunner, s3_bucket: str, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    local = tmp_path / "spread.pth"
    torch.save({f"w.{i}": torch.randn(256, 256, generator=g) for i in range(RECORDS)}, local)
    upload(s3_bucket, local, "spread.pth")
    remote.COUNTERS.reset()
    r = runner.invoke(cli, ["scan", f"s3://{s3_bucket}/spread.pth"])
    assert r.exit_code == 0, r.stderr
    # size, head, tail, then one small range per record header (no multi-range on s3)
    assert remote.COUNTERS.requests <= 3 + RECORDS + 2
    assert remote.COUNTERS.bytes <= MB + _pickle_size(local)
