"""Render a ``TrainerResumeResult``: the verdict, then each piece of NEXT against the resumed
run, the logged losses after CKPT and the first leaves that differ."""

from __future__ import annotations

from ckpttools.ops.resume.trainers import TrainerResumeResult
from ckpttools.render import heading, table, to_json

MAX_DIFF_ROWS = 30


def render_trainer_resume(result: TrainerResumeResult, fmt: str) -> str:
    """The report for ``fmt`` (``table``, ``markdown`` or ``json``)."""
    if fmt == "json":
        return to_json(result.to_dict())
    word = "OK" if result.ok else "CANNOT RESUME" if result.status == "cannot_resume" else "DIVERGED"
    lines = [heading(f"{word}: {result.verdict}", fmt), f"recipe: {result.recipe} ({result.framework})",
             (f"run: {result.run_steps} steps uninterrupted, resumed from the checkpoint "
              f"{result.framework} wrote at step {result.resume_step}" if result.run_steps else
              f"checkpoints: {result.checkpoint} (step {result.resume_step}) -> "
              f"{result.next_checkpoint} (step {result.end_step})"),
             f"tolerance: {'bitwise' if result.atol == 0 else f'atol {result.atol}'}"
             + (f", later steps drift-atol {result.drift_atol}" if result.drift_atol else "")]
    if result.skipped:
        lines.append(f"not compared (paths and settings): {', '.join(result.skipped)}")
    parts = ["\n".join(lines)]
    if result.pieces:
        rows = [[p.name, p.kind, p.leaves, p.differing, p.first or "-"] for p in result.pieces]
        parts.append(heading("Pieces", fmt) + "\n" + table(
            rows, ["piece", "kind", "leaves", "differ", "first difference"], fmt))
    if result.losses:
        rows = [[r.step, r.reference, r.resumed, r.diff, r.status] for r in result.losses]
        parts.append(heading("Losses after CKPT", fmt) + "\n" + table(
            rows, ["step", "NEXT", "resumed", "diff", "status"], fmt))
    if result.diffs:
        rows = [[d.key, d.status, "-" if d.max_abs is None else f"{d.max_abs:.3g}", d.detail]
                for d in result.diffs[:MAX_DIFF_ROWS]]
        parts.append(heading("Differences", fmt) + "\n" + table(
            rows, ["key", "status", "max abs", "detail"], fmt))
    return "\n\n".join(parts)
