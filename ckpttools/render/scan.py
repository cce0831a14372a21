"""Rendering a ``ScanResult``: every global of every pickle, classified; or JSON."""

from __future__ import annotations

from ckpttools.ops.audit.scan import VERDICTS, FileScan, ScanResult
from ckpttools.render import table, to_json

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


def render_scan(result: ScanResult, fmt: str, *, verbose: bool = True) -> str:
    """The report for stdout: ``json`` (the ``to_dict()`` document), ``table`` or ``text``."""
    if fmt == "json":
        return to_json(result.to_dict())
    lines: list[str] = []
    for f in result.files:
        lines += _file_lines(f, "markdown" if fmt == "markdown" else "table", verbose)
    counts = result.to_dict()["counts"]
    names = {"safe": "safe", "unknown": "not proven safe", "unsafe": "dangerous",
             "error": "cannot judge"}
    lines.append(", ".join(f"{n} {names[k]}" for k, n in counts.items() if n) or "no files")
    return "\n".join(lines)
