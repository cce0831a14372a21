"""Every example in README.md and docs/*.md runs here, as written.

- ```console blocks: each ``$ command`` runs, in order, one shell-like session per document,
  starting in a fresh folder that holds ``examples/`` and the example files in ``demo/``
  (``python examples/make_examples.py demo``). Supported: ``ckpttools ...`` (optionally
  ``> FILE``), ``python ...``, ``cd DIR``. The lines after a command are its output, stdout then
  stderr; ``...`` alone on a line stands for any number of lines, ``<...>`` for any text within
  a line (times, absolute paths). A trailing ``# exit N`` says the command exits with N (else 0).
- ```yaml blocks: pre-commit hooks (``repo: local``) run their ``entry`` on the example files;
  a GitHub Actions step's ``ckpttools`` lines run in ``demo/``.
- a ``$ command`` transcript in a plain, text or shell block must be a console block instead (usage
  synopses without ``$`` are fine anywhere).
- ```toml / ```ini blocks holding a ckpttools section are read by the settings loader.

A block that cannot run here (installs, stdin pipes) carries ``<!-- not run: REASON -->`` on
the line before it; a block that neither runs nor says why fails this test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S[^>]*?)\s*-->\s*$")
EXIT = re.compile(r"\s+#\s*exit\s+(?P<code>\d+)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a document."""

    doc: Path
    line: int
    lang: str
    body: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc``, with the not-run reason written above each, if any."""
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        body = "\n".join(row[len(m.group("indent")):] for row in m.group("body").splitlines())
        out.append(Block(doc, line, m.group("lang"), body, reason.group("reason") if reason else None))
    return out


@dataclass
class Command:
    """One ``$ command`` of a console block with the output shown after it."""

    argv: list[str]
    expected: list[str]
    exit_code: int
    line: int


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    pending = ""
    for i, row in enumerate(block.body.splitlines()):
        if pending or row.startswith("$ "):
            text = pending + (row[2:] if not pending else row.strip())
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            code = EXIT.search(text)
            argv = shlex.split(text, comments=True)
            out.append(Command(argv, [], int(code.group("code")) if code else 0, block.line + 1 + i))
        elif out:
            out[-1].expected.append(row)
        elif row.strip():
            raise AssertionError(f"{block.where}: output before the first '$ ' command")
    return out


def matches(expected: list[str], actual: str) -> bool:
    """Whether ``actual`` is ``expected`` with its placeholders filled in."""
    pattern = []
    while expected and not expected[-1].strip():
        expected = expected[:-1]
    for row in expected:
        if row.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            escaped = re.escape(row.rstrip()).replace(re.escape("<...>"), "[^\n]*")
            pattern.append(escaped + r"\n")
    lines = [r.rstrip() for r in actual.rstrip("\n").splitlines()]
    return re.fullmatch("".join(pattern), "\n".join(lines) + "\n" if lines else "") is not None


class Session:
    """A shell-like session: a working folder and the commands run in it."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cwd = root
        self.monkeypatch = monkeypatch

    def run(self, argv: list[str], where: str) -> tuple[str, int]:
        redirect = None
        if any(token in ("|", "<", "&&", ";") for token in argv):
            raise AssertionError(f"{where}: pipes and command lists cannot run in the tests; "
                                 "split the command, or mark the block <!-- not run: REASON -->")
        if ">" in argv:
            argv, redirect = argv[: argv.index(">")], argv[argv.index(">") + 1]
        if argv[0] == "cd":
            self.cwd = (self.cwd / argv[1]).resolve()
            return "", 0
        if argv[0] == "ckpttools":
            self.monkeypatch.chdir(self.cwd)
            result = CliRunner().invoke(cli, argv[1:])
            stdout, stderr, code = result.stdout, result.stderr, result.exit_code
        elif argv[0] in ("python", "python3"):
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            done = subprocess.run([sys.executable, *argv[1:]], cwd=self.cwd, env=env,
                                  capture_output=True, text=True, timeout=300)
            stdout, stderr, code = done.stdout, done.stderr, done.returncode
        else:
            raise AssertionError(f"{where}: '{argv[0]}' cannot run in the tests; run it with "
                                 "ckpttools/python/cd, or mark the block <!-- not run: REASON -->")
        if redirect:
            (self.cwd / redirect).write_text(stdout)
            stdout = ""
        return stdout + stderr, code


@pytest.fixture(scope="module")
def example_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example files, written once by the bundled script."""
    dest = tmp_path_factory.mktemp("examples") / "demo"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_examples.py"), str(dest)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return dest


def fresh_session(tmp_path: Path, example_files: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    shutil.copytree(example_files, tmp_path / "demo")
    return Session(tmp_path, monkeypatch)


def _ids(docs: list[Path]) -> list[str]:
    return [str(d.relative_to(ROOT)) for d in docs]


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_console_examples_run_as_written(doc: Path, tmp_path: Path, example_files: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    session = fresh_session(tmp_path, example_files, monkeypatch)
    ran = 0
    for block in blocks(doc):
        if block.lang != "console" or block.not_run:
            continue
        for command in commands(block):
            where = f"{doc.relative_to(ROOT)}:{command.line}"
            output, code = session.run(command.argv, where)
            shown = "\n".join(command.expected)
            assert code == command.exit_code, f"{where}: exit {code}, not {command.exit_code}\n{output}"
            assert matches(command.expected, output), \
                f"{where}: output differs from the document\n--- document\n{shown}\n--- actual\n{output}"
            ran += 1
    if doc.name == "README.md":
        assert ran >= 10, "the README's examples were not found"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_block_runs_or_says_why_not(doc: Path) -> None:
    for block in blocks(doc):
        if block.lang == "console" and not block.not_run:
            for command in commands(block):
                assert command.argv[0] in ("ckpttools", "python", "python3", "cd"), \
                    f"{block.where}: '{command.argv[0]}' cannot run here; mark the block " \
                    "<!-- not run: REASON -->"
        transcript = any(row.startswith("$ ") for row in block.body.splitlines())
        if block.lang in ("", "text", "sh", "bash", "shell") and transcript:
            assert block.not_run, (f"{block.where}: a '$ command' transcript outside a console block; "
                                   "write it as ```console with its output, or mark it "
                                   "<!-- not run: REASON -->")


def _yaml_blocks() -> list[Block]:
    return [b for d in DOCS for b in blocks(d) if b.lang in ("yaml", "yml") and not b.not_run]


@pytest.mark.parametrize("block", _yaml_blocks(), ids=lambda b: b.where)
def test_ci_snippets_run(block: Block, tmp_path: Path, example_files: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    yaml = pytest.importorskip("yaml")
    session = fresh_session(tmp_path, example_files, monkeypatch)
    session.cwd = tmp_path / "demo"
    data = yaml.safe_load(block.body)
    ran = 0
    for item in data if isinstance(data, list) else [data]:
        for hook in item.get("hooks", []) if item.get("repo") == "local" else []:
            files = [str(p.relative_to(session.cwd)) for p in sorted(session.cwd.rglob("*"))
                     if p.is_file() and re.search(hook.get("files", ""), str(p.relative_to(session.cwd)))]
            output, code = session.run([*shlex.split(hook["entry"]), *hook.get("args", []), *files],
                                       block.where)
            assert code == 0 and files, f"{block.where}: hook {hook['id']} exit {code}\n{output}"
            ran += 1
        for step in (item.get("steps", [item]) if isinstance(item, dict) else []):
            for line in str(step.get("run", "")).splitlines():
                if line.strip().startswith("ckpttools "):
                    output, code = session.run(shlex.split(line, comments=True), block.where)
                    assert code == 0, f"{block.where}: '{line.strip()}' exit {code}\n{output}"
                    ran += 1
    assert ran, f"{block.where}: nothing to run; mark it <!-- not run: REASON -->"


def _settings_blocks() -> list[Block]:
    return [b for d in DOCS for b in blocks(d)
            if b.lang in ("toml", "ini", "cfg") and "ckpttools" in b.body and not b.not_run]


@pytest.mark.parametrize("block", _settings_blocks(), ids=lambda b: b.where)
def test_settings_examples_are_read(block: Block, tmp_path: Path) -> None:
    from ckpttools.ops.audit.config import AuditConfig, load_settings

    name = "pyproject.toml" if block.lang == "toml" else "setup.cfg"
    (tmp_path / name).write_text(block.body)
    config, source = load_settings(tmp_path)
    assert source == str(tmp_path / name) and config != AuditConfig(), block.where


def test_placeholders() -> None:
    assert matches(["a <...> c", "...", "z"], "a b c\nx\ny\nz\n")
    assert matches(["a", "..."], "a\n")
    assert not matches(["a", "z"], "a\nx\nz\n")
    assert not matches(["a <...> c"], "a b\nc\n")


def test_a_block_that_cannot_run_must_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "new.md"
    doc.write_text("```console\n$ pip install x\n```\n\n<!-- not run: installs packages -->\n"
                   "```console\n$ pip install y\n```\n\n```console\n$ ckpttools --version | cat\n```\n")
    found = blocks(doc)
    assert [b.not_run for b in found] == [None, "installs packages", None]
    session = Session(tmp_path, monkeypatch)
    for block in (found[0], found[2]):
        with pytest.raises(AssertionError, match="mark the block <!-- not run: REASON -->"):
            session.run(commands(block)[0].argv, "new.md")
