"""The CI formats of audit and scan: SARIF 2.1.0, JUnit XML and GitHub workflow commands.

SARIF is validated with jsonschema against the parts of the SARIF 2.1.0 schema (OASIS,
``sarif-schema-2.1.0.json``) that code-scanning dashboards require; without jsonschema the same
required fields are checked by hand.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests._models import tiny_net
from tests.malicious_corpus import Payload

# The required properties and enumerations of SARIF 2.1.0 along the path a result takes.
_MESSAGE = {"type": "object", "anyOf": [{"required": ["text"]}, {"required": ["id"]}],
            "properties": {"text": {"type": "string"}}}
SARIF_SUBSET: dict[str, Any] = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "$schema": {"type": "string", "format": "uri"},
        "version": {"enum": ["2.1.0"]},
        "runs": {"type": "array", "items": {
            "type": "object", "required": ["tool"],
            "properties": {
                "tool": {"type": "object", "required": ["driver"], "properties": {
                    "driver": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string"}, "version": {"type": "string"},
                        "rules": {"type": "array", "uniqueItems": True, "items": {
                            "type": "object", "required": ["id"],
                            "properties": {"id": {"type": "string"}, "shortDescription": _MESSAGE}}},
                    }}}},
                "results": {"type": "array", "items": {
                    "type": "object", "required": ["message"],
                    "properties": {
                        "ruleId": {"type": "string"}, "ruleIndex": {"type": "integer", "minimum": -1},
                        "level": {"enum": ["none", "note", "warning", "error"]},
                        "message": _MESSAGE,
                        "locations": {"type": "array", "items": {"type": "object", "properties": {
                            "physicalLocation": {"type": "object", "properties": {
                                "artifactLocation": {"type": "object", "properties": {
                                    "uri": {"type": "string", "format": "uri-reference"}}}}}}}},
                    }}},
            }}},
    },
}


def validate_sarif(log: dict[str, Any]) -> None:
    """Validate against the SARIF subset; rule indexes must point at their rule."""
    try:
        import jsonschema
    except ImportError:  # the same required fields, by hand
        assert log["version"] == "2.1.0"
        for run in log["runs"]:
            assert run["tool"]["driver"]["name"]
            for r in run["results"]:
                assert r["message"]["text"] and r["level"] in ("none", "note", "warning", "error")
    else:
        jsonschema.validate(log, SARIF_SUBSET)
    for run in log["runs"]:
        rules = run["tool"]["driver"]["rules"]
        for r in run["results"]:
            assert rules[r["ruleIndex"]]["id"] == r["ruleId"]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    good = tmp_path / "good.pth"
    torch.save(tiny_net().state_dict(), good)
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(2), "x": Payload(os.system, "true")}, bad)
    return good, bad


@pytest.mark.parametrize("command", ["audit", "scan"])
def test_sarif_is_valid_and_names_the_unsafe_file(runner: CliRunner, files: tuple[Path, Path],
                                                  command: str) -> None:
    good, bad = files
    result = runner.invoke(cli, [command, str(good), str(bad), "--format", "sarif"])
    assert result.exit_code == 1, result.stderr
    log = json.loads(result.stdout)
    validate_sarif(log)
    errors = [r for r in log["runs"][0]["results"] if r["level"] == "error"]
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in errors}
    assert uris == {str(bad)} and any("system" in r["message"]["text"] for r in errors)


@pytest.mark.parametrize("command", ["audit", "scan"])
def test_sarif_of_a_clean_run_has_no_results(runner: CliRunner, files: tuple[Path, Path],
                                             command: str) -> None:
    result = runner.invoke(cli, [command, str(files[0]), "--format", "sarif"])
    assert result.exit_code == 0
    log = json.loads(result.stdout)
    validate_sarif(log)
    assert log["runs"][0]["results"] == []


def test_scan_junit_and_github(runner: CliRunner, files: tuple[Path, Path]) -> None:
    good, bad = files
    junit = runner.invoke(cli, ["scan", str(good), str(bad), "--format", "junit"])
    assert junit.exit_code == 1
    suite = ET.fromstring(junit.stdout)
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == [str(bad)]
    github = runner.invoke(cli, ["scan", str(good), str(bad), "--format", "github"])
    lines = github.stdout.splitlines()
    assert any(line.startswith(f"::error file={bad}") for line in lines)
    assert lines[-1].startswith("::notice title=ckpttools scan::")
