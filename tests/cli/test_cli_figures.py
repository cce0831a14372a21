"""``--plot`` and ``--html`` through the CLI: real checkpoints in, files that are what they say
out, the report on stdout unchanged, one error line and no file when the job cannot be done."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.cli.test_contract import ERROR_LINE
from tests.malicious_corpus import Payload
from tests.ops.resume.test_verify import variant
from tests.render._checks import parse_page, png_size, svg_root
from tests.render._real import tuned_pair

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    path_a, path_b, _, _ = tuned_pair(tmp_path_factory.mktemp("pair"))
    return path_a, path_b


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_diff_plot_keeps_the_report(runner: CliRunner, pair: tuple[Path, Path], tmp_path: Path,
                                    ext: str) -> None:
    a, b = map(str, pair)
    plain = runner.invoke(cli, ["diff", a, b])
    out = tmp_path / f"changes.{ext}"
    result = runner.invoke(cli, ["diff", a, b, "--plot", str(out)])
    assert result.exit_code == plain.exit_code == 1  # the fine-tune changed values
    assert result.stdout == plain.stdout
    assert result.stderr.strip().endswith(f"wrote the layer-change chart to {out}")
    png_size(out) if ext == "png" else svg_root(out)


_DRAW_COLD = """
import sys
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diff.pair import diff_checkpoints
from ckpttools.render.plots.diff import plot_diff
with open_checkpoint(sys.argv[1]) as a, open_checkpoint(sys.argv[2]) as b:
    result = diff_checkpoints(a, b)
sys.stdout.buffer.write(plot_diff(result, sys.argv[3]))
"""


# matplotlib imported the usual way first, so ckpttools' import_matplotlib changes nothing
_PLAIN_IMPORT = "import matplotlib; matplotlib.use('Agg'); import matplotlib.figure\n"


def _cold_chart(pair: tuple[Path, Path], fmt: str, plain_import: bool = False) -> bytes:
    """The chart drawn by a fresh process that imports matplotlib only to draw it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = (_PLAIN_IMPORT if plain_import else "") + _DRAW_COLD
    done = subprocess.run([sys.executable, "-c", code, *map(str, pair), fmt], cwd=ROOT,
                          env=env, capture_output=True, timeout=120, check=True)
    return done.stdout


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_chart_does_not_depend_on_the_light_import(pair: tuple[Path, Path], fmt: str) -> None:
    """ckpttools imports matplotlib without building its artists' help text: the chart has the
    bytes of one drawn after matplotlib was imported the usual way."""
    assert _cold_chart(pair, fmt) == _cold_chart(pair, fmt, plain_import=True)


_AFTER_LIGHT_IMPORT = """
import matplotlib.artist as martist
from ckpttools.render.plots import import_matplotlib
builder, kwdoc = martist.Artist._update_set_signature_and_docstring, martist.kwdoc
import_matplotlib()
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
assert martist.kwdoc is kwdoc and martist.Artist._update_set_signature_and_docstring == builder
line, = Figure().subplots().plot([1, 2])
line.set(color="red", linewidth=3)  # set() itself still takes every property
assert (line.get_color(), line.get_linewidth()) == ("red", 3)
class Later(Line2D):  # a class defined afterwards gets its help text as usual
    pass
assert "linewidth" in Later.set.__doc__ and "linewidth" in str(__import__("inspect").signature(Later.set))
print("ok")
"""


def test_light_import_puts_matplotlib_back() -> None:
    """The help-text builders are swapped only while ckpttools imports matplotlib."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _AFTER_LIGHT_IMPORT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_diff_chart_does_not_depend_on_the_warm_up(pair: tuple[Path, Path], tmp_path: Path,
                                                   fmt: str) -> None:
    """``diff A B --plot`` imports matplotlib in a thread while the pairs are compared: the chart
    it writes has the bytes of one drawn by a process that did nothing else, and a chart asked
    for while the thread still imports waits for it (matplotlib is not thread-safe)."""
    from ckpttools.formats.registry import open_checkpoint
    from ckpttools.ops.diff.pair import diff_checkpoints
    from ckpttools.render import plots
    from ckpttools.render.plots.diff import plot_diff

    cold = _cold_chart(pair, fmt)
    out = tmp_path / f"changes.{fmt}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "ckpttools", "diff", *map(str, pair), "--plot",
                           str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert out.read_bytes() == cold
    with open_checkpoint(str(pair[0])) as ra, open_checkpoint(str(pair[1])) as rb:
        result = diff_checkpoints(ra, rb)
    thread = plots.warm_up()
    assert plot_diff(result, fmt) == cold
    assert not thread.is_alive()


def test_diff_plot_starts_the_import_after_the_first_chunk_pair() -> None:
    """The comparison's memory peaks at its first chunk pair: matplotlib's import starts after
    it (at the second progress report), once, and every report still reaches the progress bar."""
    from ckpttools.cli.diff_cmd import _warm_after_first_chunk
    from ckpttools.render import plots

    seen: list[int] = []
    step = _warm_after_first_chunk(seen.append)
    before = len(plots._WARMING)
    step(8)
    assert len(plots._WARMING) == before
    step(8)
    step(8)
    assert len(plots._WARMING) == before + 1 and seen == [8, 8, 8]
    plots._WARMING[-1].join()


@pytest.mark.parametrize("name", ["changes.jpg", "changes"])
def test_plot_extension_is_checked_before_the_work(runner: CliRunner, pair: tuple[Path, Path],
                                                   tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = runner.invoke(cli, ["diff", *map(str, pair), "--plot", str(out)])
    assert result.exit_code == 2 and result.stdout == ""
    assert ERROR_LINE.match(result.stderr.strip()) and "--plot" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing folder", "under a file"])
def test_plot_folder_is_checked_before_the_work(runner: CliRunner, pair: tuple[Path, Path],
                                                tmp_path: Path, where: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / ("missing" if where == "missing folder" else "file.txt") / "changes.png"
    result = runner.invoke(cli, ["diff", *map(str, pair), "--plot", str(out)])
    assert result.exit_code == 2 and result.stdout == ""  # stopped before the comparison
    assert ERROR_LINE.match(result.stderr.strip()), result.stderr
    assert result.stderr.startswith(f"ckpttools: error: --plot {out}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.fixture()
def immutable(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may create files in, root included (``chattr +i``, ext4/xfs/btrfs)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True) \
        if shutil.which("chattr") else None
    if done is None or done.returncode != 0:
        pytest.skip("chattr +i is not available here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("command", ["diff --plot", "audit --html", "scan --html"])
def test_a_folder_that_cannot_be_written_in_is_refused_before_the_work(
        runner: CliRunner, pair: tuple[Path, Path], immutable: Path, command: str) -> None:
    name, option = command.split()
    dest = immutable / ("x.png" if option == "--plot" else "x.html")
    args = [*map(str, pair)] if name == "diff" else [str(pair[0])]
    result = runner.invoke(cli, [name, *args, option, str(dest)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"ckpttools: error: {option} {dest}: folder {immutable} "
                                     f"cannot be written in; give a path in a folder you can write")
    assert list(immutable.iterdir()) == []


def test_a_write_that_fails_after_the_check_is_one_line(immutable: Path) -> None:
    # the folder was checked when the command started; it was locked while the work ran
    from ckpttools.cli._figures import write_file
    from ckpttools.errors import OutputError

    dest = immutable / "changes.png"
    with pytest.raises(OutputError, match=r"changes.png: the layer-change chart could not be "
                                          r"written \(Operation not permitted\); give a path"):
        write_file(str(dest), b"\x89PNG", "the layer-change chart")
    assert list(immutable.iterdir()) == []


def test_plot_goes_with_diff_a_b(runner: CliRunner, pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = runner.invoke(cli, ["diff", str(pair[0]), "--model", "tests/render/_real.py:TinyLM",
                                 "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "--plot goes with OTHER" in result.stderr


def _without_matplotlib(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # matplotlib made unimportable, as in an install without the plot extra
    code = ("import sys; sys.modules['matplotlib'] = None; from ckpttools.cli.main import cli; "
            "cli(prog_name='ckpttools')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120)


def test_without_matplotlib_exit_2_with_the_install_line(pair: tuple[Path, Path], tmp_path: Path) -> None:
    done = _without_matplotlib(["diff", *map(str, pair), "--plot", "x.png"], tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("ckpttools: error: --plot: figures need matplotlib, which is not "
                                   "installed; pip install ckpttools[plot]")
    done = _without_matplotlib(["inspect", str(pair[0]), "--html", "x.html"], tmp_path)
    assert done.returncode == 2 and "pip install ckpttools[plot]" in done.stderr
    # a page without figures needs no matplotlib
    done = _without_matplotlib(["audit", str(pair[0]), "--html", "a.html"], tmp_path)
    assert done.returncode == 0, done.stderr
    parse_page(tmp_path / "a.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html"]


def test_verify_resume_plot_of_a_diverging_run(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "resume.svg"
    recipe = variant(tmp_path, "tutorial_mlp", "optimizer")
    result = runner.invoke(cli, ["verify-resume", "--recipe", recipe, "--steps", "8",
                                 "--resume-at", "4", "--in-process", "--plot", str(out)])
    assert result.exit_code == 1 and result.stdout.startswith("DIVERGED at step 4")
    svg_root(out)
    data = runner.invoke(cli, ["verify-resume", "--recipe", recipe, "--steps", "8", "--resume-at",
                               "4", "--in-process", "--format", "json"])
    assert json.loads(data.stdout)["drift"] == []  # recorded only for the figure


def test_inspect_plot_and_html(runner: CliRunner, pair: tuple[Path, Path], tmp_path: Path) -> None:
    png, page = tmp_path / "m.png", tmp_path / "m.html"
    result = runner.invoke(cli, ["inspect", str(pair[0]), "--stats", "--plot", str(png),
                                 "--html", str(page)])
    assert result.exit_code == 0, result.stderr
    png_size(png)
    parsed = parse_page(page)
    text = " ".join(parsed.text)
    assert "PASSED" in text, text[:300]
    assert f"inspect {pair[0]} --stats --plot {png} --html {page}" in text, text[:600]
    assert "encoder.layers.2.linear1.weight" in text and "svg" in parsed.tags
    assert parsed.tags.count("table") == 3  # modules, tensors (with the --stats columns), globals
    assert "mean" in text and "std" in text


def _nan_checkpoint(folder: Path) -> Path:
    state = tuned_pair(folder)[2]
    state["head.bias"][3] = float("nan")
    torch.save(state, folder / "nan.pt")
    return folder / "nan.pt"


def test_audit_html_linked_from_junit(runner: CliRunner, pair: tuple[Path, Path], tmp_path: Path) -> None:
    page = tmp_path / "audit.html"
    bad = _nan_checkpoint(tmp_path)
    result = runner.invoke(cli, ["audit", str(pair[0]), str(bad), "--format", "junit", "--html", str(page)])
    assert result.exit_code == 1
    suites = ET.fromstring(result.stdout)
    links = [p.get("value") for p in suites.iter("property") if p.get("name") == "html_report"]
    assert links == [str(page), str(page)]
    parsed = parse_page(page)
    text = " ".join(parsed.text)
    assert "FINDINGS: audit FAILED: 2 files" in text and "finite" in text
    assert '<tr class="FAIL">' in page.read_text()


def test_scan_html_linked_from_sarif(runner: CliRunner, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    torch.save({"w": torch.ones(2), "x": Payload(os.system, f"touch {canary}")}, tmp_path / "evil.pt")
    page = tmp_path / "scan.html"
    result = runner.invoke(cli, ["scan", str(tmp_path / "evil.pt"), "--format", "sarif", "--html", str(page)])
    assert result.exit_code == 1 and not canary.exists()
    log = json.loads(result.stdout)
    assert log["runs"][0]["properties"] == {"htmlReport": str(page).removeprefix("./")}
    parsed = parse_page(page)
    text = " ".join(parsed.text)
    assert "FINDINGS: 1 scanned: 1 dangerous" in text and "os.system" in text.replace("posix.system", "os.system")
