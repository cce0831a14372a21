"""A destination in a folder that does not exist is the contract's one-line error (exit 2) for
every command that writes: ``convert`` checked free disk space first and stopped with
``internal error: FileNotFoundError``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli

OUTPUTS = {
    "convert-safetensors": ["convert", "{src}", "{out}/m.safetensors"],
    "convert-pth": ["convert", "{src}", "{out}/m.pth"],
    "convert-dcp": ["convert", "{src}", "{out}/m", "--to", "dcp"],
    "convert-sharded": ["convert", "{src}", "{out}/m", "--max-shard-size", "1KB"],
    "remap": ["remap", "{src}", "{out}/m.pth", "--strip-prefix", "0."],
}


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_missing_output_folder(tmp_path: Path, name: str) -> None:
    src = tmp_path / "model.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 4)).state_dict(), src)
    out = tmp_path / "missing"
    args = [a.format(src=src, out=out) for a in OUTPUTS[name]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ckpttools: error: ") and "internal error" not in line
    assert f"folder {out} does not exist; create it or write elsewhere" in line
    assert not out.exists()
