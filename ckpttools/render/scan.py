"""Rendering a ``ScanResult``: every global of every pickle, classified, as a table, JSON, JUnit
XML, GitHub workflow commands or SARIF."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ckpttools.ops.audit.scan import VERDICTS, FileScan, ScanResult
from ckpttools.render import table, to_json
from ckpttools.render.sarif import Finding, junit_report_link, render_sarif

_SAFETY = {"safe": "safe", "unknown": "not proven safe", "unsafe": "RUNS CODE",
           "error": "error"}


def _file_lines(f: FileScan, fmt: str, verbose: bool) -> list[str]:
    lines = [f"{f.path}: {VERDICTS[f.safety]} ({f.kind})"]
    if f.error:
        lines.append(f"  error: {f.error}")
    lines += [f"  note: {n}" for n in f.notes]
    rows = []
    for p in f.pickles:
        for g in p.globals:
            if verbose or g.safety != "safe" or fmt == "table":
                rows.append((p.name, _SAFETY[g.safety], g.qualname, g.reason))
        rows += [(p.name, _SAFETY[x.safety], "-", x.message) for x in p.findings]
        if p.error:
            rows.append((p.name, "error", "-", f"stopped at byte {p.end}: {p.error}"))
    if rows:
        body = table(rows, ("pickle", "safety", "global", "reason"), fmt)
        lines += ["  " + line for line in body.splitlines()]
    if f.hint:
        names = f.unknown_globals
        lines.append(f"  to load it with torch.load(weights_only=True) once you trust these "
                     f"classes: {f.hint}")
        lines.append(f"  to accept them here: --allow {' --allow '.join(names)}, or "
                     f"allow-globals = {list(names)!r} in [tool.ckpttools]".replace("'", '"'))
    return lines


RULES = {"unsafe": "a global or construct that can run code when the pickle is loaded",
         "unknown": "a global off the reviewed allowlist: not proven safe (allow it with --allow)",
         "error": "the file could not be read"}


def findings(result: ScanResult) -> list[Finding]:
    """Every unsafe or unknown global, unsafe construct and unreadable file, as findings."""
    out = []
    for f in result.files:
        if f.safety == "error":
            out.append(Finding("error", "error", f.path, f.error or "could not be read"))
        for p in f.pickles:
            for g in p.globals:
                if g.safety in ("unsafe", "unknown"):
                    # not proven safe fails the gate as well: unknown fails closed
                    out.append(Finding(g.safety, "error", f.path, f"{p.name}: {g.qualname}: {g.reason}"))
            out += [Finding("unsafe", "error", f.path, f"{p.name}: {x.message}")
                    for x in p.findings if x.safety == "unsafe"]
    return out


def render_junit(result: ScanResult, report: str | None = None) -> str:
    """JUnit XML: a testcase per file; unsafe content is a failure, an unreadable file an error."""
    by_file: dict[str, list[Finding]] = {f.path: [] for f in result.files}
    for x in findings(result):
        by_file[x.path].append(x)
    failures = sum(any(x.level == "error" and x.rule != "error" for x in v) for v in by_file.values())
    errors = sum(any(x.rule == "error" for x in v) for v in by_file.values())
    suite = ET.Element("testsuite", name="ckpttools scan", tests=str(len(by_file)),
                       failures=str(failures), errors=str(errors), skipped="0")
    junit_report_link(suite, report)
    for path, found in by_file.items():
        case = ET.SubElement(suite, "testcase", classname="ckpttools.scan", name=path, file=path)
        bad = [x for x in found if x.level == "error"]
        if bad:
            tag = "error" if bad[0].rule == "error" else "failure"
            ET.SubElement(case, tag, message=bad[0].message, type=bad[0].rule).text = \
                "\n".join(x.message for x in bad)
        elif found:
            ET.SubElement(case, "system-out").text = "\n".join(x.message for x in found)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode")


def render_github(result: ScanResult) -> str:
    """GitHub Actions workflow commands: ``::error`` per dangerous or not proven safe finding,
    and a ``::notice`` summary."""
    lines = [f"::{x.level} file={_escape(x.path, True)},title=ckpttools scan {x.rule}::{_escape(x.message)}"
             for x in findings(result)]
    lines.append(f"::notice title=ckpttools scan::{_escape(_counts(result))}")
    return "\n".join(lines)


def _escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _counts(result: ScanResult) -> str:
    counts = result.to_dict()["counts"]
    names = {"safe": "safe", "unknown": "not proven safe", "unsafe": "dangerous", "error": "cannot judge"}
    return ", ".join(f"{n} {names[k]}" for k, n in counts.items() if n) or "no files"


def render_scan(result: ScanResult, fmt: str, *, verbose: bool = True, report: str | None = None) -> str:
    """The report for stdout: ``table``, ``markdown``, ``json`` (the ``to_dict()`` document),
    ``junit``, ``github`` or ``sarif``; JUnit and SARIF link ``report`` (``--html``) when given."""
    if fmt == "json":
        return to_json(result.to_dict())
    if fmt == "junit":
        return render_junit(result, report)
    if fmt == "github":
        return render_github(result)
    if fmt == "sarif":
        return render_sarif(findings(result), RULES, report)
    lines: list[str] = []
    for f in result.files:
        lines += _file_lines(f, "markdown" if fmt == "markdown" else "table", verbose)
    lines.append(_counts(result))
    return "\n".join(lines)
