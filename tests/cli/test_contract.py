"""The CLI contract, checked for every command against every bad input.

- stdout carries the report only: nothing on stdout when the job could not be done;
- an error is one line on stderr, ``ckpttools: error: <path or option>: <what is wrong>; <what to do>``,
  exit 2, no traceback, and it names the file when a file is to blame;
- no output file is left behind;
- the global options work before and after the command name, and ``--format`` offers
  table/json/markdown everywhere (plus junit/github/sarif for audit and scan).
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from ckpttools.cli._options import CI_FORMATS, OUTPUT_FORMATS
from ckpttools.cli.main import WORKFLOW, cli
from tests._models import tiny_net

ROOT = Path(__file__).resolve().parents[2]
SPEC = f"{ROOT}/tests/_models.py:TinyNet"
RECIPE = f"{ROOT}/examples/tutorial_linear.py"
ERROR_LINE = re.compile(r"^ckpttools: error: \S.*?: .+; .+$")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real training checkpoint in the layout the recipes use (also a state_dict holder)."""
    folder = tmp_path_factory.mktemp("good")
    model = tiny_net()
    torch.save({"step": 4, "model_state_dict": model.state_dict()}, folder / "good.pth")
    return folder / "good.pth"


# ---- the bad inputs ------------------------------------------------------------------------


def _missing(tmp: Path, good: Path) -> Path:
    return tmp / "absent.pth"


def _no_checkpoints(tmp: Path, good: Path) -> Path:
    folder = tmp / "notes"
    folder.mkdir()
    (folder / "README.txt").write_text("no checkpoint here\n")
    return folder


def _text(tmp: Path, good: Path) -> Path:
    path = tmp / "notes.pth"
    path.write_text("epoch 3, loss 0.41\nthese are notes, not a checkpoint\n")
    return path


def _empty(tmp: Path, good: Path) -> Path:
    path = tmp / "empty.pth"
    path.write_bytes(b"")
    return path


def _truncated(tmp: Path, good: Path) -> Path:
    path = tmp / "truncated.pth"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _fifo(tmp: Path, good: Path) -> Path:
    path = tmp / "pipe.pth"
    os.mkfifo(path)
    return path


BAD_INPUTS: dict[str, Callable[[Path, Path], Path]] = {
    "missing": _missing, "no-checkpoints": _no_checkpoints, "text": _text, "empty": _empty,
    "truncated": _truncated, "fifo": _fifo,
}


@pytest.fixture
def feed_fifo() -> Iterator[Callable[[Path], None]]:
    """Keep a FIFO from hanging a test: a thread feeds junk to any reader that opens it."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def feed(path: Path) -> None:
        def run() -> None:
            while not stop.is_set():
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as e:  # ENXIO: nobody reads yet
                    if e.errno not in (errno.ENXIO, errno.ENOENT):
                        return
                    stop.wait(0.01)
                    continue
                try:
                    os.write(fd, b"junk, not a checkpoint\n")
                except OSError:
                    pass
                os.close(fd)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    yield feed
    stop.set()
    for thread in threads:
        thread.join(timeout=5)


# ---- every command, as it takes a checkpoint -----------------------------------------------

COMMANDS: dict[str, Callable[[str, Path, Path], list[str]]] = {
    "inspect": lambda p, good, tmp: ["inspect", p],
    "diff-model": lambda p, good, tmp: ["diff", p, "--model", SPEC],
    "diff-pair": lambda p, good, tmp: ["diff", str(good), p],
    "diagnose-checkpoint": lambda p, good, tmp: ["diagnose", "--checkpoint", p, "--model", SPEC],
    "diagnose-text": lambda p, good, tmp: ["diagnose", p],
    "remap": lambda p, good, tmp: ["remap", p, str(tmp / "out.pth"), "--add-prefix", "module."],
    "convert": lambda p, good, tmp: ["convert", p, str(tmp / "out.safetensors")],
    "verify-resume": lambda p, good, tmp: ["verify-resume", "--recipe", RECIPE, p, str(good)],
    "audit": lambda p, good, tmp: ["audit", p],
    "scan": lambda p, good, tmp: ["scan", p],
}

# An invalid value for one of each command's options: refused before any work, exit 2.
INVALID_OPTIONS: dict[str, list[str]] = {
    "inspect": ["inspect", "{good}", "--format", "xml"],
    "diff-model": ["diff", "{good}", "--model", SPEC, "--format", "sarif"],
    "diff-pair": ["diff", "{good}", "{good}", "--atol", "tiny"],
    "diagnose-checkpoint": ["diagnose", "--checkpoint", "{good}", "--model", SPEC, "--format", "csv"],
    "diagnose-text": ["diagnose", "{good}", "--format", "junit"],
    "remap": ["remap", "{good}", "{tmp}/out.pth", "--rename", "(unclosed=x"],
    "convert": ["convert", "{good}", "{tmp}/out.safetensors", "--dtype", "int3"],
    "verify-resume": ["verify-resume", "--recipe", RECIPE, "--steps", "3", "--resume-at", "-1"],
    "audit": ["audit", "{good}", "--dtype", "int3"],
    "scan": ["scan", "{good}", "--format", "html"],
}


# Files that a command can judge rather than fail on. audit's integrity check exists to FAIL a
# damaged file (exit 1, in the report, and in junit/github/sarif for the dashboard); scan reads
# the pickle of a truncated zip by its local headers, and safety is all it judges.
# audit reports a damaged file as a FAIL row of its integrity check (its job is to judge it);
# scan cannot judge a truncated file, so that is one error line and exit 2 like everywhere else
REPORTED = {("audit", "text"): 1, ("audit", "empty"): 1, ("audit", "truncated"): 1}


def assert_one_error_line(result: Result, *, names: str | None = None) -> str:
    """Exit 2, nothing on stdout, exactly one contract line on stderr."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert ERROR_LINE.match(lines[0]), lines[0]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, lines[0]
    if names is not None:
        assert names in lines[0], lines[0]
    return lines[0]


def test_every_command_is_covered() -> None:
    assert {c.split("-")[0] if c.startswith(("diff-", "diagnose-")) else c for c in COMMANDS} \
        == set(WORKFLOW) == set(cli.list_commands(None))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_input_is_one_error_line_and_exit_2(runner: CliRunner, tmp_path: Path, good: Path,
                                                feed_fifo: Callable[[Path], None], command: str,
                                                bad: str) -> None:
    path = BAD_INPUTS[bad](tmp_path, good)
    if bad == "fifo":
        feed_fifo(path)
    args = COMMANDS[command](str(path), good, tmp_path)
    result = runner.invoke(cli, args)
    if (command, bad) in REPORTED:
        # the command's job is to judge this file: a report on stdout, a finding or a pass
        assert result.exit_code == REPORTED[command, bad], (result.stdout, result.stderr)
        assert path.name in result.stdout and "Traceback" not in result.stderr
        return
    # the folder is named by its path; diagnose FILE takes a file, so click names the argument
    names = "FILE" if (command, bad) == ("diagnose-text", "no-checkpoints") else path.name
    assert_one_error_line(result, names=names)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("command", list(INVALID_OPTIONS))
def test_invalid_option_value_is_exit_2(runner: CliRunner, tmp_path: Path, good: Path,
                                        command: str) -> None:
    args = [a.format(good=good, tmp=tmp_path) for a in INVALID_OPTIONS[command]]
    line = assert_one_error_line(runner.invoke(cli, args))
    option = [a for a in INVALID_OPTIONS[command] if a.startswith("--")][-1]
    value = INVALID_OPTIONS[command][INVALID_OPTIONS[command].index(option) + 1]
    assert option in line or value in line.split(": ")[2], line
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("args, subject", [
    (["frobnicate"], "frobnicate"),
    (["inspect"], "PATH"),
    (["inspect", "x.pth", "--bogus"], "--bogus"),
    (["--format", "sarif", "inspect", "x.pth"], "--format"),
    (["audit", "{good}", "--config", "{tmp}/absent.toml"], "absent.toml"),
    (["audit", "{tmp}/*.nothing"], "*.nothing"),
    (["scan", "{tmp}/**/*.nothing"], "*.nothing"),
    (["diff", "{good}"], "diff"),
    (["verify-resume", "--recipe", RECIPE, "--steps", "4", "--resume-at", "9"], "--resume-at"),
])
def test_usage_and_input_errors_are_one_line(runner: CliRunner, tmp_path: Path, good: Path,
                                             args: list[str], subject: str) -> None:
    args = [a.format(good=good, tmp=tmp_path) for a in args]
    line = assert_one_error_line(runner.invoke(cli, args))
    assert line.startswith("ckpttools: error: ") and subject in line.split(": ")[2], line


def test_empty_folder_is_no_input(runner: CliRunner, tmp_path: Path) -> None:
    for command in ("audit", "scan", "inspect"):
        assert_one_error_line(runner.invoke(cli, [command, str(tmp_path)]), names=tmp_path.name)


# ---- global options before or after the command name ---------------------------------------

def _valid_call(command: str, good: Path, tmp: Path) -> tuple[list[str], int]:
    calls = {
        "inspect": (["inspect", str(good)], 0),
        "diff": (["diff", str(good), "--model", SPEC, "--key", "model_state_dict"], 0),
        "diagnose": (["diagnose", "--checkpoint", str(good), "--model", SPEC], 0),
        "remap": (["remap", str(good), str(tmp / "r.pth"), "--add-prefix", "m.", "--dry-run"], 0),
        "convert": (["convert", str(good), str(tmp / "c.safetensors"), "--force"], 0),
        "verify-resume": (["verify-resume", "--recipe", RECIPE, "--steps", "3", "--resume-at", "1",
                           "--in-process"], 0),
        "audit": (["audit", str(good)], 0),
        "scan": (["scan", str(good)], 0),
    }
    return calls[command]


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("command", WORKFLOW)
def test_global_options_before_or_after(runner: CliRunner, tmp_path: Path, good: Path,
                                        command: str, where: str) -> None:
    args, code = _valid_call(command, good, tmp_path)
    options = ["--format", "json", "--trust", "--quiet", "--debug"]
    argv = options + args if where == "before" else args + options
    result = runner.invoke(cli, argv)
    assert result.exit_code == code, (result.stdout, result.stderr)
    json.loads(result.stdout)  # the report alone, in the format asked for
    assert result.stderr == ""  # --quiet: not even the --trust warning


@pytest.mark.parametrize("command", WORKFLOW)
def test_format_choices(command: str) -> None:
    option = next(p for p in cli.commands[command].params if p.name == "output_format")
    expected = CI_FORMATS if command in ("audit", "scan") else OUTPUT_FORMATS
    assert tuple(option.type.choices) == expected


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
@pytest.mark.parametrize("command", WORKFLOW)
def test_every_format_renders(runner: CliRunner, tmp_path: Path, good: Path, command: str,
                              fmt: str) -> None:
    if command == "verify-resume" and fmt != "table":
        pytest.skip("one run is enough; json is covered above")
    args, code = _valid_call(command, good, tmp_path)
    result = runner.invoke(cli, [*args, "--format", fmt])
    assert result.exit_code == code, result.stderr
    assert result.stdout.strip()
    if fmt == "markdown" and command in ("inspect", "audit", "scan"):
        assert "|" in result.stdout


def test_old_text_format_still_works_with_a_warning(runner: CliRunner, good: Path) -> None:
    result = runner.invoke(cli, ["audit", str(good), "--format", "text"])
    assert result.exit_code == 0
    assert "--format text is now --format table" in result.stderr
    assert "audit passed" in result.stdout


def test_findings_are_exit_1_with_the_report_on_stdout(runner: CliRunner, tmp_path: Path,
                                                       good: Path) -> None:
    result = runner.invoke(cli, ["audit", str(good), "--require", "optimizer"])
    assert result.exit_code == 1 and "FAIL" in result.stdout
    assert "error" not in result.stderr


def test_top_level_help_lists_commands_in_workflow_order_in_full(runner: CliRunner) -> None:
    out = runner.invoke(cli, ["--help"]).stdout
    positions = [out.index(f"\n  {name} ") for name in WORKFLOW]
    assert positions == sorted(positions)
    assert "..." not in out.split("Commands:")[1]


def test_debug_shows_the_traceback(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["inspect", str(tmp_path / "absent.pth"), "--debug"])
    assert result.exit_code != 0 and result.exception is not None


@pytest.mark.parametrize("command", WORKFLOW)
def test_help_has_examples_and_goes_to_stdout(runner: CliRunner, command: str) -> None:
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and result.stderr == ""
    assert "Examples:" in result.stdout and f"ckpttools {command} " in result.stdout
    assert "--format" in result.stdout and "--trust" in result.stdout and "--quiet" in result.stdout


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("ckpttools, version ")


def test_a_multi_line_message_from_user_code_is_one_line(runner: CliRunner, tmp_path: Path,
                                                         good: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text("def build_model():\n    raise ValueError('first line\\nsecond line')\n"
                      "def build_optimizer(model): pass\ndef batch(i): pass\ndef loss(m, b): pass\n")
    result = runner.invoke(cli, ["verify-resume", "--recipe", str(recipe), "--steps", "2", "--resume-at", "1",
                                 "--in-process"])
    line = assert_one_error_line(result, names="recipe.py")
    assert "first line second line" in line


def test_audit_config_file_from_another_folder(runner: CliRunner, tmp_path: Path, good: Path) -> None:
    settings = tmp_path / "ci" / "setup.cfg"
    settings.parent.mkdir()
    settings.write_text("[tool:ckpttools]  ; CI policy\nrequire = optimizer\n")
    result = runner.invoke(cli, ["audit", str(good), "--config", str(settings)])
    assert result.exit_code == 1 and "completeness  FAIL" in result.stdout
    assert f"settings from {os.path.relpath(settings)}" in result.stderr
