"""Reading a zip's directory in one pass. ``zip_records._parse_central`` splits a central directory at its signatures
(``_split_central``) before walking it entry by entry (``_walk_central``): the records, or the
error, must be the walk's on both corpora, on archives whose names hold the signature, zip64
entries and comments, and on every byte mutation, cut and insertion of a torch zip's directory.
Names twice, and TorchScript's names, are found past the one-pass checks that skip asking each."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttools.formats import sniff
from ckpttools.formats import zip_records as zr


def _directory(data: bytes) -> tuple[bytes, int]:
    """The central directory's bytes and the count its end record gives."""
    entries, (_, offset, size) = zr.read_entries(io.BytesIO(data), len(data))
    return data[offset:offset + size], len(entries)


def _outcome(parse: Any, data: bytes, count: int) -> Any:
    try:
        return parse(data, count)
    except (zr.ZipError, ValueError, IndexError) as e:  # struct.error, UnicodeDecodeError
        return type(e).__name__, str(e)


def _same(data: bytes, count: int) -> None:
    assert _outcome(zr._parse_central, data, count) == _outcome(zr._walk_central, data, count)


def test_a_torch_zip_is_split(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save({f"w{i}": torch.zeros(2) for i in range(40)}, path)
    data, count = _directory(path.read_bytes())
    split = zr._split_central(data, count)
    assert split is not None and split == zr._walk_central(data, count)
    assert [r.name for r in split][:2] == ["m/data.pkl", "m/.format_version"]


def test_corpora_read_the_same(corpora: dict[str, Path]) -> None:
    read = 0
    for p in corpora.values():
        raw = p.read_bytes()
        if raw[:4] != b"PK\x03\x04":
            continue
        try:
            data, count = _directory(raw)
        except ValueError:  # ZipError, or a name that is not UTF-8 (tested by the mutations)
            continue
        _same(data, count)
        read += 1
    assert read > 15


def test_odd_archives_read_the_same(tmp_path: Path) -> None:
    """A name holding the signature, comments and extra fields, zip64 sizes: the split is
    refused or gives the walk's records."""
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/PK\x01\x02b", b"x")
        info = zipfile.ZipInfo("a/commented")
        info.comment = b"PK\x01\x02 in a comment"
        info.extra = b"\xaa\xbb\x04\x00PK\x01\x02"
        zf.writestr(info, b"y")
        zf.writestr("a/\u00e9t\u00e9", b"z")
        with zf.open("a/big", "w", force_zip64=True) as out:
            out.write(b"w" * 10)
    data, count = _directory(path.read_bytes())
    assert zr._split_central(data, count) is None
    _same(data, count)
    records = zr._parse_central(data, count)
    assert [r.name for r in records] == ["a/PK\x01\x02b", "a/commented", "a/\u00e9t\u00e9", "a/big"]
    for n in (0, 1, 3, 5):  # the end record counts fewer or more entries than there are
        _same(data, n)


def test_every_directory_mutation_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save({f"w{i}": torch.zeros(2) for i in range(4)}, path)
    data, count = _directory(path.read_bytes())
    rng = random.Random(20)
    checked = 0
    for at in range(len(data)):
        for value in {0, 0x50, 0xFF, data[at] ^ 0x80, rng.randrange(256)}:
            _same(data[:at] + bytes([value]) + data[at + 1:], count)
            checked += 1
        _same(data[:at] + data[at + 1:], count)  # a byte cut
        _same(data[:at] + b"PK\x01\x02" + data[at:], count)  # a signature inserted
    for cut in range(len(data)):
        _same(data[:cut], count)
    assert checked > 1000


def test_names_twice_are_found_past_the_one_pass_checks(tmp_path: Path) -> None:
    """``read_directory`` and ``archive_problems`` ask each name only when one C-level pass
    finds two alike: a name twice keeps its first record and is reported, and so is a name
    twice in different case; distinct names report nothing."""
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/data.pkl", b"first")
        zf.writestr("a/x", b"x")
        with pytest.warns(UserWarning):
            zf.writestr("a/data.pkl", b"second")
        zf.writestr("a/X", b"y")
    data = path.read_bytes()
    records = zr.read_directory(io.BytesIO(data), len(data))
    assert list(records) == ["a/data.pkl", "a/x", "a/X"]
    assert zr.read_record(str(path), io.BytesIO(data), records["a/data.pkl"]) == b"first"
    problems = zr.archive_problems(io.BytesIO(data), len(data))
    assert problems == ["two records named 'a/data.pkl'",
                        "two records named 'a/X' and 'a/x' (torch ignores case)"]
    case = tmp_path / "case.zip"  # no name twice but in its case
    with zipfile.ZipFile(case, "w") as zf:
        for name in ("a/data.pkl", "a/x", "a/X"):
            zf.writestr(name, b"z")
    assert zr.archive_problems(io.BytesIO(case.read_bytes()), case.stat().st_size) == [
        "two records named 'a/X' and 'a/x' (torch ignores case)"]
    clean = tmp_path / "clean.pth"
    torch.save({"w": torch.zeros(2)}, clean)
    assert zr.archive_problems(io.BytesIO(clean.read_bytes()), clean.stat().st_size) == []


def test_torchscript_names_are_found_past_the_one_search() -> None:
    """``sniff.is_torchscript`` asks each name only when the joined names hold either text."""
    plain = [f"m/data/{i}" for i in range(50)] + ["m/data.pkl"]
    assert not sniff.is_torchscript(plain)
    assert sniff.is_torchscript(plain + ["m/constants.pkl"])
    assert sniff.is_torchscript(["m/code/__torch__.py"] + plain)
    # the joined text holds both, no name does: each name is asked
    assert not sniff.is_torchscript(["m/constants.pk", "l\n", "m/", "code/"])
    assert not sniff.is_torchscript(["m/constants.pkl.bak", "m/code"])
