"""SARIF 2.1.0 logs, the format code-scanning dashboards (GitHub, GitLab, Azure DevOps) read.

One run per report, one result per finding; a rule per check (``audit``) or safety class
(``scan``). Only findings are results: a clean report is a run with no results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ckpttools.render import to_json

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = ("error", "warning", "note")


@dataclass(frozen=True)
class Finding:
    """One SARIF result: which rule, how bad, where, and what."""

    rule: str
    level: str
    path: str
    message: str


def sarif_log(findings: Iterable[Finding], rules: dict[str, str], version: str,
              report: str | None = None) -> dict[str, Any]:
    """A SARIF 2.1.0 log with one run.

    Args:
        findings: the results.
        rules: rule id -> one-line description, for every rule a finding may name.
        version: the tool's version.
        report: the HTML report written beside it (``--html``), linked from the run's properties.
    """
    findings = list(findings)
    ids = sorted(rules)
    results = [{
        "ruleId": f.rule, "ruleIndex": ids.index(f.rule), "level": f.level,
        "message": {"text": f.message},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(f.path)}}}],
    } for f in findings]
    driver = {"name": "ckpttools", "version": version,
              "rules": [{"id": r, "name": r.replace("/", "-"), "shortDescription": {"text": rules[r]}}
                        for r in ids]}
    run: dict[str, Any] = {"tool": {"driver": driver}, "results": results}
    if report:
        run["properties"] = {"htmlReport": _uri(report)}
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}


def _uri(path: str) -> str:
    # SARIF wants URI references: forward slashes, relative paths stay relative to the checkout
    return path.replace("\\", "/").removeprefix("./")


def render_sarif(findings: Iterable[Finding], rules: dict[str, str], report: str | None = None) -> str:
    """The SARIF log as JSON text."""
    from ckpttools import __version__

    return to_json(sarif_log(findings, rules, __version__, report))


def junit_report_link(suite: Any, report: str | None) -> None:
    """``<properties><property name="html_report" .../>`` first in a JUnit ``testsuite``."""
    if report:
        import xml.etree.ElementTree as ET

        props = ET.Element("properties")
        ET.SubElement(props, "property", name="html_report", value=report)
        suite.insert(0, props)
