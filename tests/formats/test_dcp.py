"""DcpReader on real ``torch.distributed.checkpoint.save`` directories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttools.entries import TensorRef
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.dcp_dir import DcpReader
from ckpttools.formats.registry import open_checkpoint


def dcp_state() -> dict[str, Any]:
    torch.manual_seed(0)
    return {
        "model": {"w": torch.randn(3, 4), "b.x": torch.ones(2, dtype=torch.bfloat16),
                  "ünï": torch.arange(5)},
        "optim": {"state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.zeros(3, 4)}},
                  "param_groups": [{"lr": 0.1, "params": [0]}]},
        "epoch": 7, "loss": 0.5,
    }


@pytest.fixture
def ckpt(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint("dcp", dcp_state())


def test_entries_values_and_tree(ckpt: Path) -> None:
    state = dcp_state()
    with open_checkpoint(ckpt) as reader:
        assert isinstance(reader, DcpReader)
        tensors = {e.key: e for e in reader.tensor_entries()}
        assert set(tensors) == {"model.w", "model.b.x", "model.ünï", "optim.state.0.step",
                                "optim.state.0.exp_avg"}
        assert tensors["model.b.x"].dtype == "bfloat16" and tensors["model.w"].shape == (3, 4)
        assert tensors["model.w"].location.endswith(".distcp")
        assert torch.equal(reader.load("model.w"), state["model"]["w"])
        assert torch.equal(reader.load("model.ünï"), state["model"]["ünï"])
        assert torch.equal(reader.load("optim.state.0.step"), torch.tensor(2.0))
        objects = {e.key: e.value for e in reader.object_entries()}
        assert objects["epoch"] == 7 and objects["loss"] == 0.5
        tree = reader.tree()
        assert tree["model"]["b.x"] == TensorRef("model.b.x")
        assert tree["optim"]["param_groups"][0]["lr"] == 0.1
        with pytest.raises(KeyError):
            reader.load("epoch")


def test_metadata_is_never_unpickled(ckpt: Path) -> None:
    code = ("import sys; from ckpttools.formats.registry import open_checkpoint; "
            f"r = open_checkpoint({str(ckpt)!r}); r.entries(); r.tree(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_damaged_metadata_and_chunks(ckpt: Path) -> None:
    distcp = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
    data = distcp.read_bytes()
    distcp.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="distcp"):
        with open_checkpoint(ckpt) as reader:
            for e in reader.tensor_entries():
                reader.load(e.key)
    meta = ckpt / ".metadata"
    meta.write_bytes(meta.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match=os.path.basename(ckpt)):
        open_checkpoint(ckpt)


@pytest.mark.filterwarnings("ignore::UserWarning")  # DCP: "torch.distributed is disabled"
def test_items_of_one_shape_walk_one_pickle(tmp_path: Path) -> None:
    # each item's pickle was walked once per lookup (a deep-stack thread each, about 1 ms):
    # converting 30,000 small tensors to DCP spent most of its time there
    import torch.distributed.checkpoint as dcp

    from ckpttools.formats import dcp_dir

    state = {f"layers.{i}.weight": torch.full((2, 3), float(i)) for i in range(40)}
    dcp.save(state, checkpoint_id=tmp_path / "ckpt")
    dcp_dir._walked_tree.cache_clear()
    reader = DcpReader(str(tmp_path / "ckpt"))
    sources = [reader.raw_source(k) for k in state]
    assert dcp_dir._walked_tree.cache_info().misses == 1
    for (key, tensor), src in zip(state.items(), sources):
        assert src is not None and src.length == 24
        with open(src.path, "rb") as f:
            f.seek(src.offset)
            assert f.read(src.length) == tensor.numpy().tobytes(), key
