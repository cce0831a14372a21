"""Render a ``ResumeResult``: verdict first, then attribution, the per-step loss table and the
per-tensor diff table."""

from __future__ import annotations

import math

from ckpttools.ops.resume.verify import ResumeResult
from ckpttools.ops.resume.attribution import LABELS
from ckpttools.ops.resume.compare import LossRow, TensorDiff
from ckpttools.render import heading, table, to_json
from ckpttools.units import plural

PLOT_WIDTH = 24
MAX_STATE_ROWS = 40


def render_resume(result: ResumeResult, fmt: str) -> str:
    """The report for ``fmt`` (``table``, ``markdown`` or ``json``)."""
    if fmt == "json":
        return to_json(result.to_dict())
    parts = [_header(result, fmt), _attribution(result, fmt), _losses(result.losses, fmt), _states(result, fmt)]
    return "\n\n".join(p for p in parts if p)


def _header(result: ResumeResult, fmt: str) -> str:
    verdict = "OK: " + result.verdict if result.ok else "DIVERGED" + result.verdict.removeprefix("diverged")
    lines = [heading(verdict, fmt), f"recipe: {result.recipe}"]
    if result.mode == "checkpoints":
        lines.append(f"checkpoints: {result.checkpoint} (step {result.resume_step}) -> "
                     f"{result.next_checkpoint} (step {result.end_step})")
    else:
        where = "a fresh process" if result.fresh_process else "this process"
        via = f", sent through {result.via}" if result.via else ""
        lines.append(f"run: {plural(result.end_step, 'step')}, saved after step {result.resume_step}{via}, "
                     f"resumed in {where}")
    lines.append(f"tolerance: first resumed step {_tol(result.atol)}, later steps {_tol(result.drift_atol)}")
    if result.missing:
        lines.append("missing from the checkpoint (resumed fresh): "
                     + ", ".join(LABELS[p] for p in result.missing))
    lines.extend(f"hint: {h}" for h in result.hints)
    return "\n".join(lines)


def _tol(value: float) -> str:
    return "bitwise" if value == 0 else f"atol {value:g}"


def _attribution(result: ResumeResult, fmt: str) -> str:
    if not result.attributions:
        return ""
    rows = [[LABELS[a.piece], "yes" if a.in_checkpoint else "NO", _yes_no(a.matters),
             "-" if a.loss_change is None else _num(a.loss_change), a.note.split("; ", 1)[-1]]
            for a in result.attributions]
    return heading("Attribution", fmt) + "\n" + table(
        rows, ["state", "in checkpoint", "matters", "loss change", "finding"], fmt)


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.1e}"


def _losses(rows: tuple[LossRow, ...], fmt: str) -> str:
    if not rows:
        return ""
    values = [v for r in rows for v in (r.reference, r.resumed) if v is not None and math.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    out = [[r.step, _loss(r.reference), _loss(r.resumed), _num(r.diff), _status(r.status),
            _plot(r, low, high)] for r in rows]
    return heading("Loss per step (o reference, x resumed, * both)", fmt) + "\n" + table(
        out, ["step", "reference", "resumed", "abs diff", "status", "loss"], fmt)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.9g}"


def _status(status: str) -> str:
    return {"differs": "DIFFERS", "before-resume": "", "resumed-only": ""}.get(status, status)


def _plot(row: LossRow, low: float, high: float) -> str:
    cells = [" "] * PLOT_WIDTH
    span = (high - low) or 1.0
    for value, mark in ((row.reference, "o"), (row.resumed, "x")):
        if value is None or not math.isfinite(value):
            continue
        i = min(PLOT_WIDTH - 1, int((value - low) / span * (PLOT_WIDTH - 1)))
        cells[i] = "*" if cells[i] in ("o", "*") and mark == "x" else mark
    return "|" + "".join(cells).rstrip()


def _states(result: ResumeResult, fmt: str) -> str:
    first = {d.key: d for d in result.first_step_diffs}
    keys = list(dict.fromkeys([*first, *(d.key for d in result.final_diffs)]))
    final = {d.key: d for d in result.final_diffs}
    shown = keys
    if len(keys) > MAX_STATE_ROWS:
        shown = [k for k in keys if not all(d.status == "identical" for d in (first.get(k), final.get(k)) if d)]
    rows = []
    for key in shown:
        detail = (final.get(key) or first[key]).detail
        row = [key, _cell(first.get(key))] if first else [key]
        rows.append([*row, _cell(final.get(key)), detail])
    headers = ["key", f"after step {result.resume_step}"] if first else ["key"]
    headers += [f"at step {result.end_step}", "detail"]
    hidden = len(keys) - len(shown)
    title = "State" + (f" ({hidden} bitwise identical entries not shown)" if hidden and rows else "")
    if not rows:
        return heading("State", fmt) + f"\nall {len(keys)} entries bitwise identical"
    return heading(title, fmt) + "\n" + table(rows, headers, fmt)


def _cell(diff: TensorDiff | None) -> str:
    if diff is None:
        return "-"
    if diff.status in ("close", "differs") and diff.max_abs is not None:
        return f"{diff.status.upper() if diff.status == 'differs' else diff.status} {diff.max_abs:.1e}"
    return diff.status.upper() if diff.status in ("differs", "missing", "extra", "mismatch") else diff.status
