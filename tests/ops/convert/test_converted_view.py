"""Files written by ``convert`` read back, through every reader, as the checkpoint they came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.entries import ObjectEntry, TensorEntry
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.convert.conversion import convert_checkpoint
from tests.ops.test_inspect import training_checkpoint


def _view(path: Path) -> tuple[dict[str, object], dict[str, tuple[str, tuple[int, ...]]]]:
    with open_checkpoint(path) as reader:
        entries = reader.entries()
        objects = {e.key: e.value for e in entries if isinstance(e, ObjectEntry)}
        tensors = {e.key: (e.dtype, e.shape) for e in entries if isinstance(e, TensorEntry)}
    return objects, tensors


@pytest.mark.parametrize("target, name", [("safetensors", "out.safetensors"),
                                          ("safetensors-sharded", "sharded"), ("dcp", "dcp")])
def test_converted_training_checkpoint_reads_as_the_original(tmp_path: Path, target: str,
                                                             name: str) -> None:
    src = tmp_path / "ckpt.pth"
    torch.save(training_checkpoint(), src)
    dest = tmp_path / name
    to = {"safetensors-sharded": "safetensors"}.get(target, target)
    shard = "4KB" if target == "safetensors-sharded" else None
    assert convert_checkpoint(str(src), str(dest), to=to, max_shard_size=shard).ok
    assert _view(dest) == _view(src)
    with open_checkpoint(dest) as reader:
        assert reader.format.value == target
        assert {s for s in reader.tree()} == {"epoch", "model_state_dict",
                                              "optimizer_state_dict", "loss"}


def test_diff_of_a_conversion_is_clean(tmp_path: Path, runner: CliRunner) -> None:
    src, dest = tmp_path / "ckpt.pth", tmp_path / "ckpt.safetensors"
    torch.save(training_checkpoint(), src)
    assert runner.invoke(cli, ["convert", str(src), str(dest)]).exit_code == 0
    result = runner.invoke(cli, ["diff", str(src), str(dest)])
    assert result.exit_code == 0, result.stdout
    inspected = runner.invoke(cli, ["inspect", str(dest)])
    assert "optimizer_state_dict" in inspected.stdout and "epoch" in inspected.stdout
