"""Verification sees the object graph: a converted file whose structure was changed (a container
type, key order, _metadata, a scalar) fails verification, which names the first differing path."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ckpttools.formats.manifest import Node  # noqa: E402
from ckpttools.ops.convert import conversion  # noqa: E402
from ckpttools.ops.convert.source import Source, open_source  # noqa: E402
from ckpttools.ops.convert.verify import verify_output  # noqa: E402


def _pairs(node: Node, key: str) -> Node:
    return next(v for k, v in node["v"] if k.get("v") == key)


def _retype(root: Node) -> None:
    _pairs(root, "model")["t"] = "dict"


def _reorder(root: Node) -> None:
    pairs = _pairs(root, "model")["v"]
    pairs[0], pairs[1] = pairs[1], pairs[0]


def _metadata(root: Node) -> None:
    meta = dict(_pairs(root, "model")["a"])["_metadata"]
    _pairs(_pairs(meta, "1"), "version")["v"] = 3


def _scalar(root: Node) -> None:
    _pairs(root, "epoch")["v"] = 4


CORRUPTIONS: dict[str, tuple[Callable[[Node], None], str]] = {
    "type": (_retype, "model: OrderedDict in the source, dict in the output"),
    "order": (_reorder, "model: key order differs at position 0: '0.weight' in the source, "
                        "'0.bias' in the output"),
    "_metadata": (_metadata, "model._metadata['1']['version']: 2 in the source, 3 in the output"),
    "scalar": (_scalar, "epoch: 3 in the source, 4 in the output"),
}
TARGETS = {"pth": ("pth", None), "safetensors": ("safetensors", None),
           "sharded": ("safetensors", 200), "dcp": ("dcp", None)}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    path = tmp_path / "src.pth"
    torch.save({"model": net.state_dict(), "epoch": 3}, path)
    return path


def _corrupted(source: Source, change: Callable[[Node], None]) -> Source:
    root = copy.deepcopy(source.root)
    change(root)
    return Source(root, source.tensors, source.dropped)


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_changed_structure_is_named(src: Path, tmp_path: Path, kind: str, target: str) -> None:
    change, message = CORRUPTIONS[kind]
    fmt, shard = TARGETS[target]
    out = tmp_path / f"out.{target}"
    if fmt == "dcp" or shard:
        out.mkdir()
    with open_source(str(src)) as source:
        conversion.write_output(str(out), fmt, _corrupted(source, change), max_shard_size=shard,
                                on_progress=lambda n: None)
        assert verify_output(str(out), fmt, source, sharded=shard is not None) == [message]


def test_the_same_file_verifies(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    with open_source(str(src)) as source:
        conversion.write_output(str(out), "safetensors", source, max_shard_size=None,
                                on_progress=lambda n: None)
        assert verify_output(str(out), "safetensors", source) == []


def test_cli_exits_1_names_the_path_and_removes_the_output(
        src: Path, tmp_path: Path, runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpttools.cli.main import cli

    real = conversion.write_output

    def corrupting(tmp: str, target: str, source: Source, **kw: Any) -> Any:
        return real(tmp, target, _corrupted(source, _metadata), **kw)

    monkeypatch.setattr(conversion, "write_output", corrupting)
    out = tmp_path / "out.pth"
    result = runner.invoke(cli, ["convert", str(src), str(out)])
    assert result.exit_code == 1
    assert "model._metadata['1']['version']: 2 in the source, 3 in the output" in result.stdout
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["src.pth"]


@pytest.mark.parametrize("target", list(TARGETS))
def test_crc_check_finds_a_changed_byte(src: Path, tmp_path: Path, target: str) -> None:
    from ckpttools.formats.registry import open_checkpoint

    fmt, shard = TARGETS[target]
    out = tmp_path / f"out.{target}"
    if fmt == "dcp" or shard:
        out.mkdir()
    crcs: dict[str, int] = {}
    with open_source(str(src)) as source:
        conversion.write_output(str(out), fmt, source, max_shard_size=shard,
                                on_progress=lambda n: None, crcs=crcs)
        assert crcs  # every tensor of a .pth source is copied as a byte range
        assert verify_output(str(out), fmt, source, sharded=shard is not None, crcs=crcs) == []
        with open_checkpoint(out) as reader:
            where = reader.raw_source("model.1.running_var")
        assert where is not None
        with open(where.path, "r+b") as f:
            f.seek(where.offset + 1)
            byte = f.read(1)
            f.seek(where.offset + 1)
            f.write(bytes([byte[0] ^ 0x10]))
        problems = verify_output(str(out), fmt, source, sharded=shard is not None, crcs=crcs)
        assert problems == ["model.1.running_var: tensor bytes differ from the source"]


def test_damaged_source_is_told_apart_from_a_bad_copy(src: Path, tmp_path: Path) -> None:
    from ckpttools.formats.registry import open_checkpoint

    with open_checkpoint(src) as reader:
        where = reader.raw_source("model.1.running_var")
    assert where is not None
    with open(src, "r+b") as f:  # change a byte of the storage, not its recorded CRC-32
        f.seek(where.offset)
        byte = f.read(1)
        f.seek(where.offset)
        f.write(bytes([byte[0] ^ 0x01]))
    result = conversion.convert_checkpoint(str(src), str(tmp_path / "out.safetensors"))
    assert not result.ok and not (tmp_path / "out.safetensors").exists()
    assert result.mismatches == ("model.1.running_var: the source's bytes fail the CRC-32 its "
                                 "zip records; the source is damaged",)
