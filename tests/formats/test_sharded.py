"""Sharded safetensors and torch sets (``*.index.json``) written as transformers lays them out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ckpttools.entries import TensorEntry
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.base import Format
from ckpttools.formats.registry import detect_format, open_checkpoint
from ckpttools.formats.safetensors_sharded import ShardedSafetensorsReader, ShardedTorchReader

SHARDED = [Format.SAFETENSORS_SHARDED, Format.TORCH_SHARDED]


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"embed.weight": torch.randn(5, 4, generator=g),
            "layers.0.weight": torch.randn(4, 4, generator=g).to(torch.bfloat16),
            "layers.1.weight": torch.randn(4, 4, generator=g),
            "head.bias": torch.arange(3)}


def index_of(folder: Path) -> Path:
    return next(folder.glob("*.index.json"))


def rewrite_index(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = index_of(folder)
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("fmt", SHARDED, ids=[f.value for f in SHARDED])
def test_entries_locations_and_values(make_checkpoint: Callable[..., Path], fmt: Format) -> None:
    sd = state()
    folder = make_checkpoint(fmt.value, sd)
    index = json.loads(index_of(folder).read_text())
    assert detect_format(folder) is fmt
    assert detect_format(index_of(folder)) is fmt
    for path in (folder, index_of(folder)):
        with open_checkpoint(path) as reader:
            assert reader.format is fmt
            tensors = reader.tensor_entries()
            assert sorted(e.key for e in tensors) == sorted(sd)
            for e in tensors:
                assert e.location == index["weight_map"][e.key]
                assert (e.dtype, e.shape) == (str(sd[e.key].dtype)[6:], tuple(sd[e.key].shape))
                assert torch.equal(reader.load(e.key), sd[e.key])
            assert reader.metadata()["total_size"] == str(index["metadata"]["total_size"])
            with pytest.raises(KeyError):
                reader.load("missing.weight")


def test_raw_source_comes_from_the_shard(make_checkpoint: Callable[..., Path]) -> None:
    sd = state()
    folder = make_checkpoint("safetensors-sharded", sd)
    with open_checkpoint(folder) as reader:
        src = reader.raw_source("head.bias")
    assert src is not None and src.path.endswith("model-00002-of-00002.safetensors")
    with open(src.path, "rb") as f:
        f.seek(src.offset)
        assert f.read(src.length) == sd["head.bias"].numpy().tobytes()


def test_shards_open_lazily(make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint("safetensors-sharded", state())
    # damage the second shard: loading from the first still works, listing everything does not
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\x08" + bytes(15))
    with ShardedSafetensorsReader(folder) as reader:
        assert reader.load("embed.weight").shape == (5, 4)
        with pytest.raises(CorruptCheckpointError, match="model-00002-of-00002.safetensors"):
            reader.entries()


def test_folder_with_both_sets_reads_either(tmp_path: Path) -> None:
    sd = state()
    from tests.conftest import write_checkpoint

    st = write_checkpoint("safetensors-sharded", sd, tmp_path / "a")
    pt = write_checkpoint("torch-sharded", sd, tmp_path / "b")
    for f in pt.iterdir():
        f.rename(st / f.name)
    assert detect_format(st) is Format.SAFETENSORS_SHARDED  # what transformers prefers too
    with open_checkpoint(st, format=Format.TORCH_SHARDED) as reader:
        assert isinstance(reader, ShardedTorchReader)
        assert {e.location for e in reader.tensor_entries()} == {
            "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}


def test_index_with_a_different_name_is_found_by_its_shards(tmp_path: Path) -> None:
    sd = {"w": torch.ones(2)}
    save_file(sd, str(tmp_path / "part-a.safetensors"))
    (tmp_path / "weights.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"w": "part-a.safetensors"}}))
    assert detect_format(tmp_path) is Format.SAFETENSORS_SHARDED
    with open_checkpoint(tmp_path) as reader:
        assert [e.key for e in reader.entries()] == ["w"]


def test_index_lists_a_key_its_shard_lacks(make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint("safetensors-sharded", state())
    rewrite_index(folder, lambda i: i["weight_map"].update(
        {"ghost.weight": "model-00001-of-00002.safetensors"}))
    with open_checkpoint(folder) as reader:
        with pytest.raises(CorruptCheckpointError,
                           match="'ghost.weight' is missing from shard model-00001"):
            reader.entries()
        with pytest.raises(CorruptCheckpointError, match="ghost.weight"):
            reader.load("ghost.weight")


def test_shard_holds_a_key_the_index_lacks(make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint("torch-sharded", state())
    rewrite_index(folder, lambda i: i["weight_map"].pop("head.bias"))
    with open_checkpoint(folder) as reader, pytest.raises(
            CorruptCheckpointError, match="holds tensor 'head.bias' that the index does not list"):
        reader.entries()


def test_index_points_outside_its_folder(make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint("safetensors-sharded", state())
    rewrite_index(folder, lambda i: i["weight_map"].update(
        {"embed.weight": "../elsewhere.safetensors"}))
    with pytest.raises(CorruptCheckpointError, match="outside the index's folder"):
        open_checkpoint(folder)


def test_torch_shards_keep_pickle_globals_by_shard(make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint("torch-sharded", state())
    with open_checkpoint(folder) as reader:
        pickles = {g.pickle.split("/")[0] for g in reader.pickle_globals()}
    assert pickles == {"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}


def test_entries_are_tensor_entries_only(make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint("safetensors-sharded", state())
    with open_checkpoint(folder) as reader:
        assert all(isinstance(e, TensorEntry) for e in reader.entries())
        assert [e.key for e in reader.entries()] == list(reader.tree())
