"""The bad-input table through ``ckpttools inspect``: exit 2, one stderr line, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.formats.test_bad_inputs import CASES, Case, build_case
from tests.formats.test_registry import FOREIGN


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_inspect_bad_input_exits_2_with_one_line(runner: CliRunner, tmp_path: Path,
                                                 case: Case) -> None:
    path = build_case(case, tmp_path)
    result = runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert path.name in lines[0]


@pytest.mark.parametrize("build, kind", FOREIGN,
                         ids=["torchscript", "npy", "npz", "gguf", "onnx", "onnx-as-bin"])
def test_inspect_foreign_file_names_its_kind(runner: CliRunner, tmp_path: Path,
                                             build: Callable[[Path], Path], kind: str) -> None:
    path = build(tmp_path)
    result = runner.invoke(cli, ["inspect", str(path), "--format", "json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and kind in result.stderr
