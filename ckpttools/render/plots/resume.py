"""``verify-resume --plot``: reference and resumed loss per step, and per-piece drift."""

from __future__ import annotations

import math
import os
from typing import Any

from ckpttools.ops.resume.verify import ResumeResult
from ckpttools.render.plots import COLOURS, figure_bytes, new_figure


def plot_resume(result: ResumeResult, fmt: str) -> bytes:
    """The resume figure as PNG or SVG bytes: losses on the left axis, drift on the right."""
    fig, ax = new_figure(9, 4.2)
    ref = [(r.step, r.reference) for r in result.losses if r.reference is not None]
    res = [(r.step, r.resumed) for r in result.losses if r.resumed is not None]
    if ref:
        ax.plot(*zip(*ref), color=COLOURS[0], lw=2, label="reference (uninterrupted)")
    if res:
        ax.plot(*zip(*res), color=COLOURS[1], lw=1.5, ls="--", marker="o", ms=3,
                label="resumed")
    ax.axvline(result.resume_step - 0.5, color="#555555", ls=":", lw=1)
    ax.annotate(f"resume after step {result.resume_step - 1}", (result.resume_step - 0.5, 1),
                xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points",
                fontsize=8, color="#555555")
    if result.diverged_step is not None:
        ax.axvline(result.diverged_step, color=COLOURS[5], lw=1.5)
        ax.annotate(f"diverged at step {result.diverged_step}", (result.diverged_step, 1),
                    xycoords=("data", "axes fraction"), xytext=(3, -24),
                    textcoords="offset points", fontsize=8, color=COLOURS[5])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if result.drift:
        more = _drift_axis(ax, result)
        handles, labels = handles + more[0], labels + more[1]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8,
               frameon=False)
    name = os.path.basename(result.recipe)
    ax.set_title(f"verify-resume ({result.status.replace('_', ' ')}): {name}", fontsize=10)
    return figure_bytes(fig, fmt)


def _drift_axis(ax: Any, result: ResumeResult) -> tuple[list[Any], list[str]]:
    """Max abs drift per piece on a log axis; bitwise-equal steps sit on its floor."""
    second = ax.twinx()
    values = [d.max_abs for d in result.drift if d.max_abs > 0 and math.isfinite(d.max_abs)]
    floor = min(values) / 10 if values else 1e-8
    ceiling = max(values) * 10 if values else 1.0
    pieces = list(dict.fromkeys(d.piece for d in result.drift))
    for n, piece in enumerate(pieces):
        rows = [d for d in result.drift if d.piece == piece]
        # drift after ``step`` completed steps: the state once step ``step - 1`` has run
        xs = [d.step - 1 for d in rows]
        ys = [ceiling if not math.isfinite(d.max_abs) else max(d.max_abs, floor) for d in rows]
        second.plot(xs, ys, color=COLOURS[(n + 2) % len(COLOURS)], lw=1, marker="s", ms=3,
                    label=f"drift: {piece} (max abs)")
    second.set_yscale("log")
    second.set_ylim(floor / 2, ceiling * 2)
    label = "max abs drift (log; floor = identical)"
    second.set_ylabel(label, fontsize=8)
    return second.get_legend_handles_labels()
