"""``audit`` of a DCP folder whose data file was cut short: the damage shows only when the
finite check reads the items, and it is an integrity FAIL in the report (exit 1), not a
stopped run (exit 2, no report), as docs/cli-contract.md says of every damaged file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from ckpttools.cli.main import cli  # noqa: E402


def test_truncated_distcp_is_an_integrity_fail(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": model.state_dict()}, storage_writer=dcp.FileSystemWriter(str(folder)),
                 no_dist=True)
    data = folder / "__0_0.distcp"
    os.truncate(data, data.stat().st_size * 2 // 3)
    result = CliRunner().invoke(cli, ["--format", "json", "audit", str(folder)])
    assert result.exit_code == 1, result.output
    import json

    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["integrity"]["status"] == "FAIL"
    assert "damaged" in checks["integrity"]["reason"]
    assert checks["finite"]["status"] == "SKIP"
