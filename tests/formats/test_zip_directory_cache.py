"""The zip directory that detection reads is reused by the reader, and only for the same file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ckpttools.formats import zip_records
from ckpttools.formats.registry import open_checkpoint


def test_the_reader_reuses_the_directory_detection_read(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pth"
    torch.save({f"layers.{i}.weight": torch.zeros(2) for i in range(50)}, path)
    reads: list[int] = []
    parse = zip_records.read_directory
    monkeypatch.setattr(zip_records, "read_directory",
                        lambda f, size: reads.append(size) or parse(f, size))
    with open_checkpoint(str(path)) as reader:
        assert len(reader.entries()) == 50
    assert len(reads) == 1  # sniffing and the reader: one parse


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(2)}, path)
    with open_checkpoint(str(path)) as reader:
        assert [e.key for e in reader.entries()] == ["a"]
    torch.save({"a": torch.zeros(2), "b": torch.ones(3)}, path)  # same path, new content
    os.utime(path, ns=(1, 1))  # even with a clock that does not move, the size differs
    with open_checkpoint(str(path)) as reader:
        assert [e.key for e in reader.entries()] == ["a", "b"]
        assert reader.load("b").tolist() == [1.0, 1.0, 1.0]


def test_the_shared_directory_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(2)}, path)
    with open(path, "rb") as f:
        records = zip_records.cached_directory(f)
    with pytest.raises(TypeError):
        records["x"] = records[next(iter(records))]  # type: ignore[index]
