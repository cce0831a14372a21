"""``inspect`` and ``convert`` of a checkpoint saved from a meta-device model: the file holds shapes
and dtypes only, so nothing may count or describe data as stored, or try to copy it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli


@pytest.fixture(params=[True, False], ids=["torch-zip", "torch-legacy"])
def meta_checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    state = {"model": model.state_dict(), "w": torch.ones(3)}  # one real tensor beside
    path = tmp_path / "meta.pt"
    torch.save(state, path, _use_new_zipfile_serialization=request.param)
    return path


def test_meta_tensors_count_no_bytes(meta_checkpoint: Path, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["inspect", str(meta_checkpoint), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_key = {t["key"]: t for t in data["tensors"]}
    assert by_key["model.weight"]["bytes"] == 0 and by_key["model.weight"]["device"] == "meta"
    assert by_key["w"]["bytes"] == 12
    assert data["totals"]["bytes"] == 12 and data["totals"]["meta_tensors"] == 2
    assert data["totals"]["parameters"] == 18  # elements are still the shapes' (12 + 3 + 3)


def test_meta_tensors_said_absent_in_the_table(meta_checkpoint: Path, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["inspect", str(meta_checkpoint), "--stats"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "no data: 2 of 3 tensors are meta tensors" in out
    assert "read on CPU" not in out  # nothing of theirs is read
    assert "3 tensors, 18 elements (18), 12 B: float32 12 B" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["model.weight"] == ["-"] * 6  # no min..inf claimed for a tensor without values
    assert rows["w"][-2:] == ["0", "0"]


@pytest.mark.parametrize("dest", ["out.safetensors", "out.pt", "out_dcp"])
def test_convert_refuses_meta_tensors_in_one_line(meta_checkpoint: Path, runner: CliRunner,
                                                  dest: str) -> None:
    out = meta_checkpoint.parent / dest
    args = ["convert", str(meta_checkpoint), str(out)] + (["--to", "dcp"] if "dcp" in dest else [])
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (f"ckpttools: error: {meta_checkpoint}: model.weight is a meta tensor, "
                             "saved without data, so there is nothing to convert; load real "
                             "weights into the model and save it again\n")
    assert sorted(p.name for p in meta_checkpoint.parent.iterdir()) == ["meta.pt"]
