"""inspect_checkpoint on real files of every format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ckpttools.errors import CkptError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.inspect import inspect_checkpoint
from tests._models import tiny_net


def training_checkpoint() -> dict:
    """A PyTorch-tutorial-style checkpoint: model, optimizer, epoch, loss."""
    model = tiny_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    optimizer.step()
    return {"epoch": 3, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(), "loss": 0.4512}


def test_nested_training_checkpoint_layout(make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", training_checkpoint())
    with open_checkpoint(path) as reader:
        result = inspect_checkpoint(reader)
    kinds = {s.key: s.kind for s in result.layout}
    assert kinds == {"model_state_dict": "model", "optimizer_state_dict": "optimizer"}
    assert result.default_state_dict == "model_state_dict"
    values = {o.key: o.value for o in result.objects}
    assert values["epoch"] == 3 and values["loss"] == pytest.approx(0.4512)
    assert values["optimizer_state_dict.param_groups.0.lr"] == pytest.approx(1e-3)
    keys = {t.key for t in result.tensors}
    assert "optimizer_state_dict.state.0.exp_avg" in keys
    assert "model_state_dict.bn.num_batches_tracked" in keys
    assert result.ok and not result.unsafe_globals


def test_key_shows_subtree_with_relative_keys(make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", training_checkpoint())
    with open_checkpoint(path) as reader:
        result = inspect_checkpoint(reader, key="model_state_dict", pattern="*.weight")
    model = tiny_net()
    expected = {k for k in model.state_dict() if k.endswith(".weight")}
    assert {t.key for t in result.tensors} == expected
    shapes = {t.key: t.shape for t in result.tensors}
    assert shapes["head.weight"] == (10, 8)


def test_unknown_key_is_an_error(make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", training_checkpoint())
    with open_checkpoint(path) as reader, pytest.raises(CkptError, match="no entry 'nope'"):
        inspect_checkpoint(reader, key="nope")


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy", "safetensors", "safetensors-sharded", "dcp"])
def test_flat_state_dict_every_format(fmt: str, make_checkpoint: Callable[..., Path]) -> None:
    state = tiny_net().state_dict()
    path = make_checkpoint(fmt, state)
    with open_checkpoint(path) as reader:
        result = inspect_checkpoint(reader)
    got = {t.key: (t.dtype, t.shape) for t in result.tensors}
    want = {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state.items()}
    assert got == want
    assert result.to_dict()["totals"]["parameters"] == sum(v.numel() for v in state.values())


def test_stats_count_nan_and_inf(make_checkpoint: Callable[..., Path]) -> None:
    t = torch.tensor([1.0, 2.0, 3.0, float("nan"), float("inf")])
    path = make_checkpoint("safetensors", {"w": t, "b": torch.arange(4, dtype=torch.int64)})
    with open_checkpoint(path) as reader:
        result = inspect_checkpoint(reader, with_stats=True)
    assert result.stats is not None
    stats = {s.key: s for s in result.stats}
    assert (stats["w"].nan, stats["w"].inf) == (1, 1)
    assert stats["w"].min == 1.0 and stats["w"].max == 3.0 and stats["w"].mean == pytest.approx(2.0)
    assert stats["b"].max == 3.0 and stats["b"].is_finite


def test_stats_in_bfloat16_and_gpu_free(make_checkpoint: Callable[..., Path]) -> None:
    t = torch.linspace(-1, 1, 9, dtype=torch.bfloat16)
    path = make_checkpoint("torch-zip", {"w": t})
    with open_checkpoint(path) as reader:
        (stats,) = inspect_checkpoint(reader, with_stats=True).stats or ()
    assert stats.min == -1.0 and stats.max == 1.0 and stats.mean == pytest.approx(0.0, abs=1e-3)


def test_tied_weights_are_said_to_share_a_storage(tmp_path: Path) -> None:
    """A tied output and embedding are one storage in the file: the totals say that the two
    names share it (elements and bytes are counted for each name)."""
    from safetensors.torch import save_model

    from ckpttools.render.inspect import render_inspect

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    torch.save(Tied().state_dict(), tmp_path / "tied.pt")
    save_model(Tied(), str(tmp_path / "tied.safetensors"))  # stores the tensor once
    with open_checkpoint(str(tmp_path / "tied.pt")) as r:
        result = inspect_checkpoint(r)
    assert result.shared_storage == 2 and result.to_dict()["totals"]["shared_storage"] == 2
    assert "2 of the tensors share a storage with another" in render_inspect(result, "text")
    with open_checkpoint(str(tmp_path / "tied.safetensors")) as r:
        assert inspect_checkpoint(r).shared_storage == 0
