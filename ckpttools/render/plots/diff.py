"""``diff A B --plot``: relative L2 change per tensor, grouped by module in model order."""

from __future__ import annotations

import math
from typing import Any

from ckpttools.ops.diff.pair import CheckpointDiffResult
from ckpttools.render.plots import COLOURS, figure_bytes, new_figure, short_key

TOP_LABELS = 5
LABEL_POINTS = 100  # width of a top-change label, in points
MAX_BANDS = 400  # beyond this many modules the bands would be hairlines: labels only
# A span of changes wider than this many decades is drawn on a log scale.
LOG_DECADES = 2.0


def _block(key: str) -> str:
    """The module a key belongs to, up to its first layer index (``layers.3``; ``1.4`` in an
    ``nn.Sequential``, whose own children are numbered from the top)."""
    words = key.split(".")
    for i, word in enumerate(words[:-1]):
        if word.isdigit() and i > 0:
            return ".".join(words[:i + 1])
    return ".".join(words[:-1]) or words[0]


def change_rows(result: CheckpointDiffResult) -> list[tuple[str, float | None, str]]:
    """``(key, relative change, mark)`` in A's order, one-sided tensors beside their module.

    ``mark`` is ``""``, ``only A``, ``only B`` or ``shape`` (no change can be computed).
    """
    rows: list[tuple[str, float | None, str]] = [(t.key, t.rel_l2_change, "") for t in result.tensors]
    extra = [(k, None, "shape") for k, _, _ in result.shape_differences]
    extra += [(k, None, "only A") for k in result.only_a]
    extra += [(k, None, "only B") for k in result.only_b]
    pending: dict[str, list[tuple[str, float | None, str]]] = {}
    for row in extra:
        pending.setdefault(_block(row[0]), []).append(row)
    last = {_block(k): i for i, (k, _, _) in enumerate(rows)}
    out: list[tuple[str, float | None, str]] = []
    for i, row in enumerate(rows):
        out.append(row)
        block = _block(row[0])
        if last[block] == i:
            out += pending.pop(block, [])
    return out + [row for group in pending.values() for row in group]


def plot_diff(result: CheckpointDiffResult, fmt: str) -> bytes:
    """The layer-change chart as PNG or SVG bytes."""
    return plot_changes(change_rows(result), len(result.tensors), fmt)


def plot_changes(rows: list[tuple[str, float | None, str]], compared: int, fmt: str) -> bytes:
    """The layer-change chart of ``change_rows`` (``compared`` tensor pairs) as PNG or SVG."""
    fig, ax = new_figure(10, 4.2, layout=None)
    values = [v for _, v, m in rows if v is not None]
    finite = [v for v in values if math.isfinite(v) and v > 0]
    top = max(finite, default=1.0)
    log = bool(finite) and math.log10(top / min(finite)) > LOG_DECADES
    floor = min(finite) / 3 if log else 0.0
    heights = [(top * (3 if log else 1.15) if v is not None and not math.isfinite(v) else v or floor)
               if m == "" else floor for _, v, m in rows]
    ticks = _shade_blocks(ax, [k for k, _, _ in rows])
    xs = range(len(rows))
    colours = [COLOURS[5] if v is not None and not math.isfinite(v) else COLOURS[0]
               for _, v, _ in rows]
    if len(rows) <= 300:
        _bars(ax, heights, floor, colours)
    else:
        # thousands of lines as SVG paths make megabytes: drawn as one embedded image instead
        ax.vlines(xs, floor, heights, colors=colours, linewidth=0.8, rasterized=len(rows) > 2000)
    if log:
        ax.set_yscale("log")
    legend = _mark_one_sided(ax, rows, top * (5 if log else 1.2))
    _label_top(ax, rows, heights)
    changed = sum(1 for v in values if v)
    ax.set_title(f"relative L2 change ||B - A|| / ||A|| per tensor: {changed} of "
                 f"{compared} changed" + (f", {len(rows) - len(values)} marked" if
                                                     len(rows) > len(values) else ""),
                 fontsize=10)
    ax.set_ylabel("relative change" + (" (log)" if log else ""))
    ax.set_xlim(-1, len(rows))
    ax.set_ylim(top=top * (12 if log else 1.35))
    _set_margins(fig, *ticks, legend)
    return figure_bytes(fig, fmt)


def _set_margins(fig: Any, ticks: list[str], tick_size: float, legend: list[str]) -> None:
    """Margins from the lengths of the labels around the axes. A layout engine measures the
    drawn text instead, which costs a second drawing of the figure (a third of its time);
    the widths below over-estimate DejaVu Sans (at most 0.62 em per character)."""
    width, height = fig.get_size_inches()
    em = 0.62 / 72  # inches per point of font size, per character
    bottom = (max(map(len, ticks), default=0) * tick_size * em + 0.15)
    right = max(map(len, legend), default=0) * 8 * em + 0.45 if legend else 0.15
    fig.subplots_adjust(left=0.85 / width, right=1 - right / width,
                        bottom=bottom / height, top=1 - 0.3 / height)


def _bars(ax: Any, heights: list[float], floor: float, colours: list[str]) -> None:
    """Bars of width 0.8 from ``floor``, as one collection: ``ax.bar`` makes an artist per bar,
    and laying out and drawing those was a third of the chart's time."""
    from matplotlib.collections import PolyCollection

    boxes = [((x - 0.4, floor), (x - 0.4, h), (x + 0.4, h), (x + 0.4, floor))
             for x, h in enumerate(heights)]
    ax.add_collection(PolyCollection(boxes, facecolors=colours, linewidths=0))
    ax.set_ylim(bottom=floor if floor > 0 else 0.0)


def _shade_blocks(ax: Any, keys: list[str]) -> tuple[list[str], float]:
    """Alternate bands per module, labelled under the axis (every n-th when there are many)."""
    spans: list[tuple[str, int, int]] = []
    for i, key in enumerate(keys):
        block = _block(key)
        if spans and spans[-1][0] == block:
            spans[-1] = (block, spans[-1][1], i)
        else:
            spans.append((block, i, i))
    every = max(1, math.ceil(len(spans) / 40))
    ticks, labels = [], []
    for n, (block, lo, hi) in enumerate(spans):
        if n % 2 and len(spans) <= MAX_BANDS:
            ax.axvspan(lo - 0.5, hi + 0.5, color="#eeeeee", zorder=0, linewidth=0)
        if n % every == 0:
            ticks.append((lo + hi) / 2)
            labels.append(short_key(block, 24))
    size = 6 if len(ticks) > 20 else 8
    # module names as text under the axis, not as ticks: a tick is five artists (three lines,
    # two labels) made and laid out each, a quarter of the chart's time for nothing drawn
    ax.set_xticks([])
    under = ax.get_xaxis_transform()
    for x, label in zip(ticks, labels):
        ax.text(x, -0.02, label, transform=under, rotation=90, fontsize=size, ha="center",
                va="top", rotation_mode="default")
    return labels, size


def _mark_one_sided(ax: Any, rows: list[tuple[str, float | None, str]], y: float) -> list[str]:
    """Markers for tensors in one file only or of another shape; the legend's labels."""
    styles = {"only A": ("v", COLOURS[5], "only in A"), "only B": ("^", COLOURS[2], "only in B"),
              "shape": ("s", COLOURS[3], "shape differs")}
    for mark, (marker, colour, label) in styles.items():
        xs = [i for i, (_, _, m) in enumerate(rows) if m == mark]
        if xs:
            ax.scatter(xs, [y] * len(xs), marker=marker, color=colour, s=30, zorder=3,
                       label=f"{label} ({len(xs)})")
    handles, labels = ax.get_legend_handles_labels()
    if any(v is not None and not math.isfinite(v) for _, v, _ in rows):
        from matplotlib.patches import Patch

        handles.append(Patch(color=COLOURS[5]))
        labels.append("A all zeros, B not")
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
                  frameon=False)
    return labels


def _label_top(ax: Any, rows: list[tuple[str, float | None, str]], heights: list[float]) -> None:
    ranked = sorted((i for i, (_, v, m) in enumerate(rows) if m == "" and v),
                    key=lambda i: -heights[i])[:TOP_LABELS]
    # a label is about 100 points wide; one that would cover its left neighbour's (in the order
    # of the axis) is lifted above it, never pushed down onto the axis
    bar_points = 610 / max(len(rows), 1)
    previous, lifted = -10**9, False
    for i in sorted(ranked):
        lifted = (i - previous) * bar_points < LABEL_POINTS and not lifted
        previous = i
        value = rows[i][1] or 0.0
        size = f"{value:.2g}" if math.isfinite(value) else "A is all zeros"
        text = f"{short_key(rows[i][0], 36)}\n{size}"
        ax.annotate(text, (i, heights[i]), xytext=(4, 26 if lifted else 4), textcoords="offset points",
                    fontsize=7, rotation=0, ha="left", va="bottom",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#999999", "lw": 0.5})


__all__ = ["plot_diff", "plot_changes", "change_rows"]
