"""The audit CLI: exit codes, JSON, JUnit XML and GitHub workflow commands."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests._models import tiny_net


@pytest.fixture
def two_files(tmp_path: Path, canary: Path) -> tuple[Path, Path]:
    from tests.conftest import malicious_state

    good = tmp_path / "good.pth"
    torch.save(tiny_net().state_dict(), good)
    bad = tmp_path / "bad.pth"
    torch.save(malicious_state(canary), bad)
    return good, bad


def test_exit_codes(runner: CliRunner, two_files: tuple[Path, Path], tmp_path: Path) -> None:
    good, bad = two_files
    ok = runner.invoke(cli, ["audit", str(good), "--config", str(tmp_path)])
    assert ok.exit_code == 0 and "audit passed" in ok.stdout, ok.output
    assert runner.invoke(cli, ["audit", str(good), str(bad)]).exit_code == 1
    assert runner.invoke(cli, ["audit", str(tmp_path / "nope.pth")]).exit_code == 2
    assert runner.invoke(cli, ["audit", str(good), "--max-size", "lots"]).exit_code == 2


def test_json(runner: CliRunner, two_files: tuple[Path, Path]) -> None:
    result = runner.invoke(cli, ["audit", *map(str, two_files), "--format", "json"])
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["counts"]["FAIL"] == 1
    assert {c["check"] for c in data["checks"]} == {"integrity", "safety", "finite"}


def test_junit_structure(runner: CliRunner, two_files: tuple[Path, Path]) -> None:
    result = runner.invoke(cli, ["audit", *map(str, two_files), "--format", "junit",
                                 "--require", "epoch"])
    root = ET.fromstring(result.stdout)
    assert root.tag == "testsuites" and root.get("failures") == str(
        sum(1 for _ in root.iter("failure")))
    suites = root.findall("testsuite")
    assert len(suites) == 2
    for suite in suites:
        cases = suite.findall("testcase")
        assert [c.get("classname") for c in cases] == [
            "ckpttools.audit.integrity", "ckpttools.audit.safety", "ckpttools.audit.finite",
            "ckpttools.audit.completeness"]
        assert int(suite.get("tests", "0")) == len(cases)
    failed = [c for c in root.iter("testcase") if c.find("failure") is not None]
    assert any("posix.system" in (c.find("failure").get("message") or "") for c in failed)


def test_github_commands(runner: CliRunner, two_files: tuple[Path, Path]) -> None:
    result = runner.invoke(cli, ["audit", *map(str, two_files), "--format", "github"])
    lines = result.stdout.splitlines()
    pattern = re.compile(r"^::(error|warning|notice) (file=[^,:]+,)?title=[^:]+::.+$")
    assert all(pattern.match(line) for line in lines), lines
    assert any(line.startswith("::error file=") and "posix.system" in line for line in lines)
    assert lines[-1].startswith("::notice title=ckpttools audit::audit FAILED")


def test_settings_from_pyproject(runner: CliRunner, tmp_path: Path,
                                 two_files: tuple[Path, Path]) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.ckpttools]\nrequire = ["optimizer"]\n')
    result = runner.invoke(cli, ["audit", str(two_files[0]), "--config", str(tmp_path)])
    assert result.exit_code == 1 and "completeness" in result.stdout
    assert "settings from" in result.stderr


def test_help(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["audit", "--help"])
    assert result.exit_code == 0 and "ckpttools audit checkpoints/" in result.stdout
