"""A shard file beside a sharded set's index that the index does not list (a stale shard of an
earlier save with another shard count) is read by no loader; the commands that read the set
said nothing of it. They now warn, one line on stderr, and still read what the index lists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import save_torch_state_dict

from ckpttools.cli.main import cli

# the warning is the behaviour under test: let it reach the CLI's printer, not raise
pytestmark = pytest.mark.filterwarnings("always:.*beside the index:UserWarning")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    state = {f"layers.{i}.weight": torch.full((32, 32), float(i)) for i in range(6)}
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    save_torch_state_dict(state, tmp_path / "old", max_shard_size=12_000)  # 3 shards
    save_torch_state_dict(state, tmp_path / "new", max_shard_size=8_000)  # 6 shards
    stale = next((tmp_path / "old").glob("model-00001-of-*.safetensors"))
    shutil.copy(stale, tmp_path / "new" / stale.name)
    return tmp_path / "new"


@pytest.mark.parametrize("command", ["inspect", "audit", "diff", "convert"])
def test_unlisted_shard_is_named(runner: CliRunner, folder: Path, command: str) -> None:
    args = {"inspect": [str(folder)], "audit": [str(folder)], "diff": [str(folder), str(folder)],
            "convert": [str(folder), str(folder.parent / "out.safetensors")]}[command]
    result = runner.invoke(cli, [command, *args])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        f"warning: {folder}: model-00001-of-00003.safetensors beside the index, which does not "
        "list it; not read (loaders ignore it too)")


def test_a_listed_set_gets_no_warning(runner: CliRunner, folder: Path) -> None:
    (folder / "model-00001-of-00003.safetensors").unlink()
    result = runner.invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 0 and result.stderr == ""
