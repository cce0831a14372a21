"""Rendering an ``AuditResult``: a table (plain or markdown), JSON, JUnit XML, GitHub workflow
commands or SARIF."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttools.render import heading, table, to_json

if TYPE_CHECKING:
    from ckpttools.ops.audit.audit import AuditResult


def summary_line(result: AuditResult) -> str:
    """``audit passed: 2 files, 6 PASS`` (or ``audit FAILED: ...``)."""
    counts = result.counts()
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    verdict = "audit passed" if result.ok else "audit FAILED"
    files = len(result.files)
    return f"{verdict}: {files} file{'s' if files != 1 else ''}, {', '.join(parts) or 'no checks'}"


CHECKS = {
    "integrity": "the file opens in its format and its records are complete",
    "safety": "the pickles name no global that can run code",
    "finite": "no NaN or Inf in floating tensors",
    "model": "the state_dict loads into the model with strict=True",
    "completeness": "what a resume needs is present",
    "policy": "dtype and size policy",
    "reproducibility": "sha256 matches the manifest",
}


def render_text(result: AuditResult, fmt: str = "table") -> str:
    """One row per file and check, then details of every WARN/FAIL and a summary line."""
    rows = [(c.path, c.check, c.status, c.reason) for c in result.checks]
    lines = [table(rows, ("file", "check", "status", "reason"), fmt)] if rows else []
    for c in result.checks:
        if c.status in ("WARN", "FAIL") and len(c.details) > 1:
            lines.append(heading(f"{c.path} {c.check}:", fmt))
            lines += [f"  {d}" for d in c.details[:20]]
            if len(c.details) > 20:
                lines.append(f"  ... {len(c.details) - 20} more")
    if result.manifest_written:
        lines.append(f"wrote manifest {result.manifest_written}")
    lines.append(summary_line(result))
    return "\n".join(lines)


def render_junit(result: AuditResult, report: str | None = None) -> str:
    """JUnit XML: a testsuite per file, a testcase per check (FAIL -> failure, SKIP -> skipped;
    WARN passes with the reason in system-out)."""
    import xml.etree.ElementTree as ET  # the CI formats' imports: a table never needs them

    from ckpttools.render.sarif import junit_report_link

    counts = result.counts()
    root = ET.Element("testsuites", name="ckpttools audit", tests=str(len(result.checks)),
                      failures=str(counts["FAIL"]), errors="0", skipped=str(counts["SKIP"]))
    for path in result.files:
        rows = [c for c in result.checks if c.path == path]
        suite = ET.SubElement(root, "testsuite", name=path, tests=str(len(rows)), errors="0",
                              failures=str(sum(c.status == "FAIL" for c in rows)),
                              skipped=str(sum(c.status == "SKIP" for c in rows)))
        junit_report_link(suite, report)
        for c in rows:
            case = ET.SubElement(suite, "testcase", classname=f"ckpttools.audit.{c.check}",
                                 name=f"{c.check}: {path}", file=path)
            if c.status == "FAIL":
                failure = ET.SubElement(case, "failure", message=c.reason, type=c.check)
                failure.text = "\n".join(c.details) or c.reason
            elif c.status == "SKIP":
                ET.SubElement(case, "skipped", message=c.reason)
            else:
                ET.SubElement(case, "system-out").text = f"{c.status}: {c.reason}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(result: AuditResult) -> str:
    """GitHub Actions workflow commands: ``::error`` per FAIL, ``::warning`` per WARN, and a
    ``::notice`` summary."""
    lines = []
    for c in result.checks:
        level = {"FAIL": "error", "WARN": "warning"}.get(c.status)
        if level:
            props = f"file={_escape_property(c.path)},title={_escape_property('ckpttools ' + c.check)}"
            lines.append(f"::{level} {props}::{_escape_data(c.reason)}")
    lines.append(f"::notice title=ckpttools audit::{_escape_data(summary_line(result))}")
    return "\n".join(lines)


def render_audit_sarif(result: AuditResult, report: str | None = None) -> str:
    """SARIF 2.1.0: a result per FAIL (error) and WARN (warning), a rule per check."""
    from ckpttools.render.sarif import Finding, render_sarif

    level = {"FAIL": "error", "WARN": "warning"}
    findings = [Finding(c.check, level[c.status], c.path, c.reason)
                for c in result.checks if c.status in level]
    rules = {**{c.check: f"the {c.check} check" for c in result.checks}, **CHECKS}
    return render_sarif(findings, rules, report)


def render_audit(result: AuditResult, fmt: str, report: str | None = None) -> str:
    """The report for stdout in ``table``, ``markdown``, ``json``, ``junit``, ``github`` or
    ``sarif``; JUnit and SARIF link ``report`` (the ``--html`` page) when given."""
    if fmt == "json":
        return to_json(result.to_dict())
    if fmt == "junit":
        return render_junit(result, report)
    if fmt == "github":
        return render_github(result)
    if fmt == "sarif":
        return render_audit_sarif(result, report)
    return render_text(result, fmt)
