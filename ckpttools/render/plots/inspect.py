"""``inspect --plot``: parameters by module, dtype mix, and with ``--stats`` value ranges."""

from __future__ import annotations

from typing import Any

from ckpttools.ops.inspect import InspectResult
from ckpttools.render.plots import COLOURS, figure_bytes, new_figure, short_key
from ckpttools.units import human_bytes, human_count


def plot_inspect(result: InspectResult, fmt: str) -> bytes:
    """The inspect figure as PNG or SVG bytes."""
    stats = [s for s in result.stats or () if s.min is not None]
    rows = 3 if stats else 2
    fig, axes = new_figure(10, 2.2 + (3.2 if stats else 0) + 1.6, rows,
                           height_ratios=[1, 1, 3][:rows])
    sizes = result.module_sizes
    _stacked(axes[0], [(m.module, m.params) for m in sizes], human_count,
             f"parameters by module: {human_count(sum(m.params for m in sizes))} in "
             f"{len(result.tensors)} tensors", "no tensors")
    _stacked(axes[1], list(result.bytes_by_dtype.items()), human_bytes, "bytes by dtype",
             "no tensor bytes stored" + (" (meta tensors hold no data)" if result.meta_tensors
                                         else ""))
    if stats:
        _ranges(axes[2], stats)
    return figure_bytes(fig, fmt)


def _stacked(ax: Any, parts: list[tuple[str, int]], text: Any, title: str, empty: str) -> None:
    """One horizontal bar split by share, each part labelled where it fits, all in the legend;
    ``empty`` written across it when there is nothing to split (no tensors, or no bytes)."""
    if not any(v for _, v in parts):
        ax.text(0.5, 0, empty, ha="center", va="center", fontsize=9, color="#555555")
        ax.set_ylim(-0.5, 0.5)  # where a bar would stand
        parts = []  # and no legend: matplotlib warns of one without entries
    total = sum(v for _, v in parts) or 1
    left = 0.0
    for n, (name, value) in enumerate(parts):
        share = value / total
        ax.barh(0, share, left=left, color=COLOURS[n % len(COLOURS)], edgecolor="white",
                label=f"{short_key(name, 28)}: {text(value)} ({100 * share:.0f}%)")
        if share > 0.08:
            ax.text(left + share / 2, 0, short_key(name, int(share * 60) + 4), ha="center",
                    va="center", fontsize=7, color="white" if n % len(COLOURS) in (0, 7) else "black")
        left += share
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0", "25%", "50%", "75%", "100%"], fontsize=7)
    ax.set_title(title, fontsize=9, loc="left")
    if parts:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False,
                  ncols=1 if len(parts) <= 6 else 2)


def _ranges(ax: Any, stats: list[Any]) -> None:
    """Per tensor in file order: min..max as a thin line, mean +- std as a thick one."""
    xs = range(len(stats))
    ax.vlines(xs, [s.min for s in stats], [s.max for s in stats], color=COLOURS[4], lw=1,
              label="min .. max")
    ax.vlines(xs, [s.mean - s.std for s in stats], [s.mean + s.std for s in stats],
              color=COLOURS[0], lw=3, label="mean +- std")
    ax.scatter(xs, [s.mean for s in stats], color=COLOURS[7], s=4, zorder=3, label="mean")
    bad = [i for i, s in enumerate(stats) if not s.is_finite]
    if bad:
        ax.scatter(bad, [stats[i].max for i in bad], marker="x", color=COLOURS[5], s=30,
                   zorder=4, label="has NaN/Inf")
    top = max(max(abs(s.min), abs(s.max)) for s in stats) or 1.0
    ax.set_yscale("symlog", linthresh=max(top * 1e-3, 1e-12), linscale=2)
    ax.tick_params(axis="y", labelsize=7)
    ax.axhline(0, color="#999999", lw=0.5)
    every = max(1, len(stats) // 40)
    ax.set_xticks(list(xs)[::every], [short_key(s.key, 28) for s in stats][::every],
                  rotation=90, fontsize=6)
    ax.set_title("value ranges per tensor (--stats, finite values)", fontsize=9, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
