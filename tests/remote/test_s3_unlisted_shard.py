"""A shard beside a sharded set's index that the index does not list (a stale shard of an earlier
save) is named over ``s3://`` as it is in a local folder: s3 has a listing, so the same warning
applies; an HTTP folder has none, and there nothing is claimed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import save_torch_state_dict

from ckpttools.cli.main import cli
from tests.remote.conftest import upload

pytestmark = pytest.mark.filterwarnings("always:.*beside the index:UserWarning")

STALE = "model-00001-of-00003.safetensors"


def _set_with_stale_shard(tmp_path: Path) -> Path:
    state = {f"layers.{i}.weight": torch.full((32, 32), float(i)) for i in range(6)}
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    save_torch_state_dict(state, old, max_shard_size=12_000)  # 3 shards
    save_torch_state_dict(state, new, max_shard_size=8_000)  # 6 shards
    shutil.copy(old / STALE, new / STALE)
    return new


@pytest.mark.parametrize("command", ["inspect", "audit"])
def test_unlisted_shard_is_named_over_s3_as_locally(runner: CliRunner, s3_bucket: str, tmp_path: Path,
                                                     command: str) -> None:
    local = _set_with_stale_shard(tmp_path)
    upload(s3_bucket, local, "run/ckpt")
    url = f"s3://{s3_bucket}/run/ckpt"
    here = runner.invoke(cli, [command, str(local)])
    there = runner.invoke(cli, [command, url])
    assert (here.exit_code, there.exit_code) == (0, 0), there.stderr
    warning = "beside the index, which does not list it; not read (loaders ignore it too)"
    assert here.stderr.splitlines()[0] == f"warning: {local}: {STALE} {warning}"
    assert there.stderr.splitlines()[0] == f"warning: {url}: {STALE} {warning}"


def test_a_listed_set_on_s3_gets_no_warning(runner: CliRunner, s3_bucket: str, tmp_path: Path) -> None:
    local = _set_with_stale_shard(tmp_path)
    (local / STALE).unlink()
    upload(s3_bucket, local, "run/ckpt")
    result = runner.invoke(cli, ["inspect", f"s3://{s3_bucket}/run/ckpt"])
    assert result.exit_code == 0 and "beside the index" not in result.stderr
