"""``--html FILE``: one self-contained page per report, for a CI run to attach.

Nothing is fetched: the style and the few lines of script that sort a table by a click on its
header are in the page, figures are inline SVG (the XML prolog, namespaces and metadata taken
out, as HTML's parser needs none of them). On top: a summary line (passed / findings) and the
command that produced the page; below, the text report's content as tables.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckpttools.ops.audit.audit import AuditResult
from ckpttools.ops.audit.scan import VERDICTS, ScanResult
from ckpttools.ops.inspect import InspectResult
from ckpttools.units import human_bytes, human_count

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:80em}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.pass{color:#1a7f37} .fail{color:#cf222e}
code,pre{font:12px/1.4 ui-monospace,monospace;background:#f6f8fa;padding:.2em .4em}
table{border-collapse:collapse;font-size:13px;margin:.3em 0}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa;cursor:pointer;user-select:none} th:hover{background:#eaeef2}
th::after{content:" \2195";color:#8c959f;font-weight:normal}
tr.FAIL td,tr.unsafe td{background:#ffebe9} tr.WARN td,tr.unknown td{background:#fff8c5}
figure{margin:1em 0} figure svg{max-width:100%;height:auto}
"""
# Sorts a table by the clicked column: numbers as numbers (data-v holds the exact value).
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir > 0 ? "asc" : "desc";
    var key = function (r) { var c = r.cells[th.cellIndex]; var v = c.dataset.v;
      return v !== undefined ? parseFloat(v) : c.textContent; };
    rows.sort(function (a, b) { var x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * dir; });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


@dataclass(frozen=True)
class Table:
    """A sortable table: headers, rows of cells, and a class per row (``FAIL``, ``WARN``)."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    row_classes: Sequence[str] = field(default_factory=tuple)


def page(title: str, ok: bool, summary: str, command: str,
         parts: Sequence[Table | str]) -> str:
    """The whole page; ``parts`` are tables, or SVG text (a figure) to inline."""
    body = [f'<h1 class="{"pass" if ok else "fail"}">{"PASSED" if ok else "FINDINGS"}: '
            f"{html.escape(summary)}</h1>",
            f"<p>command: <code>{html.escape(command)}</code></p>"]
    for part in parts:
        body.append(_table(part) if isinstance(part, Table) else
                    f"<figure>{inline_svg(part)}</figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    rows = []
    for i, row in enumerate(t.rows):
        cls = t.row_classes[i] if i < len(t.row_classes) else ""
        cells = "".join(_cell(v) for v in row)
        rows.append(f'<tr class="{html.escape(cls)}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return (f"<h2>{html.escape(t.title)}</h2>\n<table class=\"sortable\"><thead><tr>{head}</tr>"
            f"</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _cell(value: Any) -> str:
    if isinstance(value, tuple):  # (shown text, sort value)
        return f'<td data-v="{_sort_key(value[1])}">{html.escape(str(value[0]))}</td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td data-v="{_sort_key(value)}">{html.escape(str(value))}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _sort_key(number: float) -> str:
    # what JavaScript's parseFloat reads: "inf" would be NaN, which sorts nowhere
    if math.isnan(number):
        return "-Infinity"
    return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(number, repr(number))


def inline_svg(svg: str | bytes) -> str:
    """matplotlib's SVG as an HTML element: no prolog, DOCTYPE, namespaces or RDF metadata
    (they name URLs, which a page that must not reach out should not carry)."""
    text = svg.decode("utf-8") if isinstance(svg, bytes) else svg
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text, count=0)


def audit_html(result: AuditResult, command: str) -> str:
    """The ``audit`` report: a row per file and check, the details of each WARN/FAIL."""
    from ckpttools.render.audit import summary_line

    rows = [(c.path, c.check, c.status, c.reason) for c in result.checks]
    parts: list[Table | str] = [Table("Checks", ("file", "check", "status", "reason"), rows,
                                      [c.status for c in result.checks])]
    details = [(c.path, c.check, d) for c in result.checks if c.status in ("WARN", "FAIL")
               for d in c.details]
    if details:
        parts.append(Table("Details of WARN and FAIL", ("file", "check", "detail"), details))
    return page("ckpttools audit", result.ok, summary_line(result), command, parts)


def scan_html(result: ScanResult, command: str) -> str:
    """The ``scan`` report: a verdict per file, then every global of every pickle."""
    files = [(f.path, f.kind, VERDICTS[f.safety], f.error or "; ".join(f.notes)) for f in result.files]
    globals_ = [(f.path, p.name, g.safety, g.qualname, g.reason)
                for f in result.files for p in f.pickles for g in p.globals]
    constructs = [(f.path, p.name, x.safety, x.message)
                  for f in result.files for p in f.pickles for x in p.findings]
    parts: list[Table | str] = [
        Table("Files", ("file", "kind", "verdict", "note"), files, [f.safety for f in result.files]),
        Table("Globals the pickles import", ("file", "pickle", "safety", "global", "reason"),
              globals_, [g[2] for g in globals_])]
    if constructs:
        parts.append(Table("Constructs", ("file", "pickle", "safety", "finding"), constructs,
                           [c[2] for c in constructs]))
    counts = {VERDICTS[k]: n for k, n in result.to_dict()["counts"].items() if n}
    summary = ", ".join(f"{n} {k.lower()}" for k, n in counts.items()) or "no files"
    return page("ckpttools scan", result.ok, f"{len(result.files)} scanned: {summary}", command, parts)


def inspect_html(result: InspectResult, command: str, figure_svg: bytes | None = None) -> str:
    """The ``inspect`` report: totals, modules, dtypes, tensors (with ``--stats`` columns)."""
    params = sum(t.numel for t in result.tensors)
    nbytes = sum(t.nbytes for t in result.tensors)
    summary = (f"{result.path} ({result.format}): {len(result.tensors)} tensors, "
               f"{human_count(params)} parameters, {human_bytes(nbytes)}")
    if not result.ok:
        summary += f"; {len(result.unsafe_globals) + len(result.unknown_globals)} globals not proven safe"
    parts: list[Table | str] = [figure_svg.decode("utf-8")] if figure_svg else []
    parts.append(Table("Parameters by module", ("module", "parameters", "bytes", "tensors"),
                       [(m.module, (human_count(m.params), m.params), (human_bytes(m.nbytes), m.nbytes),
                         m.tensors) for m in result.module_sizes]))
    stats = {s.key: s for s in result.stats or ()}
    extra = ("min", "max", "mean", "std", "nan", "inf") if stats else ()
    rows = []
    for t in result.tensors:
        s = stats.get(t.key)
        more = [] if not stats else ["" if s is None else _num(getattr(s, k)) for k in extra]
        rows.append((t.key, t.dtype, "x".join(map(str, t.shape)) or "scalar", t.numel,
                     (human_bytes(t.nbytes), t.nbytes), *more))
    parts.append(Table("Tensors", ("key", "dtype", "shape", "numel", "bytes", *extra), rows))
    if result.objects:
        parts.append(Table("Values", ("key", "type", "value"),
                           [(o.key, o.type_name, repr(o.value)[:80]) for o in result.objects]))
    if result.globals:
        parts.append(Table("Globals", ("global", "safety", "pickle", "reason"),
                           [(g.qualname, g.safety, g.pickle, g.reason) for g in result.globals],
                           [g.safety for g in result.globals]))
    return page("ckpttools inspect", result.ok, summary, command, parts)


def _num(value: Any) -> Any:
    if value is None:
        return ""
    return (f"{value:.4g}", value) if isinstance(value, float) else value
