"""The scan CLI, and every path-taking command of the tool over the malicious corpus: the canary
is never created."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.malicious_corpus import Case, build_corpus

MODEL = str(Path(__file__).parent.parent / "_models.py") + ":TinyNet"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Case], Path]]:
    root = tmp_path_factory.mktemp("malicious-cli")
    canary = root / "CANARY"
    yield build_corpus(root / "files", canary), canary
    assert not canary.exists(), "a command executed a pickle from the corpus"


def _argv(command: str, path: Path, out: Path) -> list[str] | None:
    table = {
        "inspect": ["inspect", str(path), "--stats"],
        "scan": ["scan", str(path)],
        "audit": ["audit", str(path), "--require", "optimizer"],
        "diff": ["diff", str(path), "--model", MODEL],
        "convert": ["convert", str(path), str(out / "out.safetensors")],
        "diagnose": ["diagnose", "--checkpoint", str(path), "--model", MODEL],
        "remap": ["remap", str(path), str(out / "out.pth"), "--strip-prefix", "layer."],
    }
    return table.get(command)


COMMANDS = ["inspect", "scan", "audit", "diff", "convert", "diagnose", "remap"]


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_executes_the_corpus(command: str, corpus: tuple[list[Case], Path],
                                        tmp_path: Path) -> None:
    if command not in cli.commands:
        pytest.skip(f"{command} is not registered")
    cases, canary = corpus
    runner = CliRunner()
    for case in cases:
        argv = _argv(command, case.path, tmp_path)
        assert argv is not None
        result = runner.invoke(cli, argv)
        assert not canary.exists(), f"{command} executed {case.name}"
        assert "Traceback" not in result.output, (case.name, result.output)
        if command in ("scan", "audit"):
            assert result.exit_code == 1, (case.name, result.output)


def test_scan_names_the_global(runner: CliRunner, corpus: tuple[list[Case], Path]) -> None:
    cases, _ = corpus
    case = next(c for c in cases if c.name == "subprocess_popen-zip")
    result = runner.invoke(cli, ["scan", str(case.path)])
    assert result.exit_code == 1
    assert "subprocess.Popen" in result.stdout and "DANGEROUS" in result.stdout
    assert "do not load it" in result.stderr


def test_scan_json_clean_and_exit_codes(runner: CliRunner, make_checkpoint: object,
                                        tiny_model: object, tmp_path: Path) -> None:
    import json

    path = make_checkpoint("torch-zip", tiny_model.state_dict())  # type: ignore[operator,attr-defined]
    result = runner.invoke(cli, ["scan", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["files"][0]["kind"] == "torch-zip"
    assert {"module", "name", "safety", "reason"} <= set(data["files"][0]["pickles"][0]["globals"][0])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello")
    assert runner.invoke(cli, ["scan", str(junk)]).exit_code == 2
    assert runner.invoke(cli, ["scan", str(tmp_path / "missing.pt")]).exit_code == 2


def test_scan_help_has_an_example(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["scan", "--help"])
    assert result.exit_code == 0 and "ckpttools scan model.pth" in result.stdout
