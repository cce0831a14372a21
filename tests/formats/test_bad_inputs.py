"""Bad inputs (STYLE 2.9) as one table of (builder, error type, message fragment).

Each builder writes a damaged checkpoint into a folder and returns the path to open. Every case
must fail with a one-line CkptError naming the file, at open or at listing, never later and
never with another exception type. tests/cli/test_cli_bad_inputs.py runs the same table
through ``ckpttools inspect``.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from ckpttools.errors import (CheckpointNotFoundError, CkptError, CorruptCheckpointError,
                              UnknownFormatError)
from ckpttools.formats.registry import open_checkpoint
from tests.conftest import write_checkpoint

STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}


def raw_safetensors(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _file(name: str, content: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (d / name).write_bytes(content)
        return d / name
    return build


def _safetensors(header: dict[str, Any], data: bytes) -> Callable[[Path], Path]:
    return _file("model.safetensors", raw_safetensors(header, data))


def _f32(shape: list[int], begin: int, end: int, dtype: str = "F32") -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def missing_path(d: Path) -> Path:
    return d / "nowhere.pth"


def no_permission(d: Path) -> Path:
    path = write_checkpoint("torch-zip", STATE, d)
    path.chmod(0)
    return path


def empty_folder(d: Path) -> Path:
    (d / "run").mkdir()
    (d / "run" / "notes.txt").write_text("no checkpoints here")
    return d / "run"


def truncated_data(d: Path) -> Path:
    path = write_checkpoint("safetensors", STATE, d)
    path.write_bytes(path.read_bytes()[:-5])
    return path


def _sharded(fmt: str, change: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        folder = write_checkpoint(fmt, STATE, d)
        change(folder)
        return folder
    return build


def _edit_index(folder: Path, text: Callable[[str], str]) -> None:
    index = next(folder.glob("*.index.json"))
    index.write_text(text(index.read_text()))


def _drop_shard(folder: Path) -> None:
    next(folder.glob("*-00002-of-00002.*")).unlink()


def _typo_in_index(folder: Path) -> None:
    _edit_index(folder, lambda t: t.replace("model-00001-of-00002", "model-0001-of-0002"))


def truncated_zip(d: Path) -> Path:
    path = write_checkpoint("torch-zip", STATE, d)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def zip_without_pickle(d: Path) -> Path:
    src = write_checkpoint("torch-zip", STATE, d / "src")
    path = d / "nopickle.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            if not name.endswith("data.pkl"):
                zout.writestr(name, zin.read(name))
    return path


class Case(NamedTuple):
    id: str
    build: Callable[[Path], Path]
    error: type[CkptError]
    fragment: str


CASES = [
    Case("empty-file", _file("model.pth", b""), CorruptCheckpointError, "empty file"),
    Case("missing-path", missing_path, CheckpointNotFoundError, "no such file"),
    Case("no-permission", no_permission, CkptError, "permission denied"),
    Case("folder-without-checkpoints", empty_folder, UnknownFormatError, "no checkpoint in it"),
    # fixed bytes: random ones sometimes open like a pickle (0x80 0x02) and are then "malformed"
    Case("garbage-bytes", _file("model.pth", random.Random(7).randbytes(64).replace(b"PK", b"pk")),
         UnknownFormatError, "not a checkpoint format"),
    Case("st-header-longer-than-file",
         _file("model.safetensors", (1000).to_bytes(8, "little") + b'{"a": 1}'),
         CorruptCheckpointError, "header length 1000 exceeds file size 16"),
    Case("st-header-not-json", _file("model.safetensors", (9).to_bytes(8, "little") + b"{not json"),
         CorruptCheckpointError, "header is not valid JSON"),
    Case("st-header-length-absurd",
         _file("model.safetensors", (2**60).to_bytes(8, "little") + b"{}" + bytes(6)),
         CorruptCheckpointError, f"header length {2**60} exceeds file size"),
    Case("st-offsets-out-of-bounds", _safetensors({"w": _f32([100], 0, 400)}, bytes(8)),
         CorruptCheckpointError, "tensor data needs 400 bytes but the data section holds 8"),
    Case("st-overlapping-offsets",
         _safetensors({"a": _f32([2], 0, 8), "b": _f32([2], 4, 12)}, bytes(12)),
         CorruptCheckpointError, "tensor 'b' overlaps"),
    Case("st-unknown-dtype", _safetensors({"a": _f32([2], 0, 8, "F99")}, bytes(8)),
         CorruptCheckpointError, "unknown dtype 'F99'"),
    Case("st-numel-size-mismatch", _safetensors({"a": _f32([3], 0, 8)}, bytes(8)),
         CorruptCheckpointError, r"spans 8 bytes but F32 \[3\] needs 12"),
    Case("st-truncated-data", truncated_data, CorruptCheckpointError,
         "but the data section holds"),
    Case("missing-shard", _sharded("safetensors-sharded", _drop_shard), CorruptCheckpointError,
         "shard model-00002-of-00002.safetensors is missing"),
    Case("missing-torch-shard", _sharded("torch-sharded", _drop_shard), CorruptCheckpointError,
         "shard pytorch_model-00002-of-00002.bin is missing"),
    Case("index-names-absent-file", _sharded("safetensors-sharded", _typo_in_index),
         CorruptCheckpointError, "shard model-0001-of-0002.safetensors is missing"),
    Case("index-json-malformed",
         _sharded("safetensors-sharded", lambda f: _edit_index(f, lambda t: t[:-3])),
         CorruptCheckpointError, "index is not valid JSON"),
    Case("index-without-weight-map",
         _sharded("safetensors-sharded", lambda f: _edit_index(f, lambda t: '{"metadata": {}}')),
         CorruptCheckpointError, "index has no weight_map"),
    Case("zip-truncated", truncated_zip, CorruptCheckpointError, "not a readable zip archive"),
    Case("zip-without-data-pkl", zip_without_pickle, CorruptCheckpointError, "without data.pkl"),
]


def build_case(case: Case, tmp_path: Path) -> Path:
    """Build ``case`` in ``tmp_path``; skips the permission case for root, who reads anything."""
    if case.id == "no-permission" and os.geteuid() == 0:
        pytest.skip("root can read a file without read permission")
    return case.build(tmp_path)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_one_line_error(tmp_path: Path, case: Case) -> None:
    path = build_case(case, tmp_path)
    with pytest.raises(case.error, match=case.fragment) as info:
        with open_checkpoint(path) as reader:
            reader.entries()
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    assert info.value.exit_code == 2
