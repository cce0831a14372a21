"""Each kind of file opened in a real browser (headless Chromium from Debian's packages): the
figures decode and have their size, the pages render with no console error and no request
outside themselves, and the inline script sorts a table.

Skipped, with the reason, where no ``chromium`` is on PATH (``apt-get install chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.ops.resume.test_verify import variant
from tests.render._real import tuned_pair

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")


def open_in_browser(page: Path) -> tuple[str, list[str]]:
    """The DOM after load, and every console message (an error, or a failed request)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--enable-logging=stderr", "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--allow-file-access-from-files", f"--user-data-dir={page.parent / '.chromium'}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, CONSOLE.findall(done.stderr)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every figure and page, written by the CLI from real checkpoints."""
    folder = tmp_path_factory.mktemp("browser")
    a, b, _, _ = tuned_pair(folder)
    recipe = variant(folder, "tutorial_mlp", "optimizer")
    runs = [["diff", str(a), str(b), "--plot", "diff.{ext}"],
            ["verify-resume", "--recipe", recipe, "--steps", "7", "--resume-at", "4", "--in-process",
             "--plot", "resume.{ext}"],
            ["inspect", str(a), "--stats", "--plot", "inspect.{ext}"]]
    runner = CliRunner()
    for args in runs:
        for ext in ("png", "svg"):
            runner.invoke(cli, [w.format(ext=ext) if "{ext}" in w else w for w in args]
                          [:-1] + [str(folder / args[-1].format(ext=ext))], catch_exceptions=False)
    runner.invoke(cli, ["inspect", str(a), "--stats", "--html", str(folder / "inspect.html")])
    runner.invoke(cli, ["audit", str(a), str(b), "--html", str(folder / "audit.html")])
    runner.invoke(cli, ["scan", str(a), "--html", str(folder / "scan.html")])
    return folder


def test_figures_decode_with_their_size(outputs: Path) -> None:
    names = [f"{n}.{ext}" for n in ("diff", "resume", "inspect") for ext in ("png", "svg")]
    imgs = "".join(f'<img id="i{n}" src="{name}" onerror="console.error(\'broken {name}\')" '
                   f'onload="document.body.dataset.i{n} = this.naturalWidth">'
                   for n, name in enumerate(names))
    page = outputs / "figures.html"
    page.write_text(f"<!DOCTYPE html><html><body>{imgs}</body></html>")
    dom, console = open_in_browser(page)
    assert console == []
    widths = {int(n): int(w) for n, w in re.findall(r'data-i(\d+)="(\d+)"', dom)}
    assert sorted(widths) == list(range(len(names))) and min(widths.values()) >= 600, dom[:500]


def column(html: str, title: str, col: int) -> list[str]:
    """The cells of column ``col`` of the table under heading ``title``, as the page has them."""
    body = html.split(f"<h2>{title}</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[col] for row in rows]


@pytest.mark.parametrize("name, title, col, numeric", [
    ("inspect.html", "Tensors", 3, True),  # numel: numbers sort as numbers
    ("audit.html", "Checks", 1, False),
    ("scan.html", "Files", 0, False),
])
def test_pages_render_and_sort(outputs: Path, name: str, title: str, col: int, numeric: bool) -> None:
    html = (outputs / name).read_text()
    # click the column's header once (ascending): the inline script must reorder the rows
    probe = ("<script>var h = Array.from(document.querySelectorAll('h2')).find(function (e) {"
             f"return e.textContent === {title!r}; }}); var t = h.nextElementSibling;"
             f"t.tHead.rows[0].cells[{col}].click();"
             "document.body.dataset.rows = t.tBodies[0].rows.length;"
             f"document.body.dataset.first = t.tBodies[0].rows[0].cells[{col}].textContent;"
             "document.body.dataset.svg = document.querySelectorAll('svg').length;</script>")
    page = outputs / f"probe-{name}"
    page.write_text(html.replace("</body>", probe + "</body>"))
    dom, console = open_in_browser(page)
    assert console == []
    assert re.search(r"<h1 class=\"pass\">PASSED: ", dom)
    first = re.search(r'data-first="([^"]*)"', dom)
    count = re.search(r'data-rows="(\d+)"', dom)
    assert first and count, dom[-800:]
    cells = column(html, title, col)
    smallest = min(cells, key=float) if numeric else min(cells)
    assert int(count.group(1)) == len(cells) and first.group(1) == smallest
    if len(cells) > 1:  # the sort moved a row up
        assert cells[0] != smallest
    if name == "inspect.html":
        assert re.search(r'data-svg="[1-9]', dom)
