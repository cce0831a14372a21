"""A DCP folder whose data file is gone: the scan tried to read it once per item, so the error
named it three times and, over ``s3://``, 12,000 items took minutes of failing requests. The
file is now tried once and named once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli


@pytest.mark.filterwarnings("ignore::UserWarning")  # DCP: "torch.distributed is disabled"
def test_missing_data_file_is_named_once(runner: CliRunner, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "ckpt"
    dcp.save({f"layers.{i}.weight": torch.zeros(2) for i in range(50)}, checkpoint_id=folder)
    (data,) = folder.glob("*.distcp")
    data.unlink()
    result = runner.invoke(cli, ["scan", str(folder)])
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.count(f"{data.name}: cannot read") == 1, line
