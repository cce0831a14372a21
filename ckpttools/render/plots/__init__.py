"""Figures for ``--plot`` and ``--html``: matplotlib (Agg), imported only when one is asked for.

A figure is built on a ``matplotlib.figure.Figure`` (no pyplot, no global state) and returned as
bytes; the CLI writes them. SVG output is made reproducible (no date, a fixed id salt) and keeps
its text as paths, so it needs no font where it is shown.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

from ckpttools.errors import InvalidArgumentError, UnsupportedError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = {".png": "png", ".svg": "svg"}
INSTALL = "pip install ckpttools[plot]"
# Colours that stay apart for the common colour-vision deficiencies (Okabe-Ito).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def figure_format(path: str, option: str = "--plot") -> str:
    """``png`` or ``svg`` from the file name's extension.

    Raises:
        InvalidArgumentError: any other extension.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise InvalidArgumentError(f"{option} {path}: a figure is written as .png or .svg, not "
                                   f"'{ext or 'no extension'}'; name the file .png or .svg")
    return FORMATS[ext]


def require_matplotlib(option: str = "--plot") -> None:
    """Fail early, before any work, when matplotlib is missing.

    Raises:
        UnsupportedError: matplotlib cannot be imported.
    """
    import importlib.util

    # found, not imported: the import itself overlaps with the work (``warm_up``)
    if importlib.util.find_spec("matplotlib") is None:
        raise UnsupportedError(f"{option}: figures need matplotlib, which is not installed; {INSTALL}")


_WORKER: Any = None


def start_worker() -> None:
    """Start ``worker.py`` (matplotlib imported on the other core while the command works)."""
    import subprocess
    import sys

    global _WORKER
    if _WORKER is None:
        _WORKER = subprocess.Popen([sys.executable, "-m", "ckpttools.render.plots.worker"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)


def draw_in_worker(rows: list[tuple[str, float | None, str]], compared: int,
                   fmt: str) -> bytes | None:
    """The layer-change chart (``diff.plot_changes``) drawn by the worker, or None when there is
    none or it failed (the caller then draws it here)."""
    import json
    import struct

    global _WORKER
    worker, _WORKER = _WORKER, None
    if worker is None:
        return None
    job = json.dumps({"rows": rows, "compared": compared, "format": fmt})  # inf as Infinity
    try:
        out, _ = worker.communicate(job.encode(), timeout=120)
    except Exception:  # noqa: BLE001 - a stuck or dead worker: draw in this process instead
        worker.kill()
        return None
    if worker.returncode != 0 or len(out) < 8:
        return None
    (n,) = struct.unpack("<Q", out[:8])
    return out[8:8 + n] if len(out) == 8 + n else None


def warm_up(torch_first: bool = False) -> None:
    """Import matplotlib in a background thread while the command does its work.

    The import takes about half a second of pure Python; ``diff A B`` spends its time reading and
    in torch kernels that release the GIL, so on a second core the two overlap. Nothing matplotlib
    imports imports torch, so the two threads' imports cannot wait on each other in a circle.

    Args:
        torch_first: the command imports torch anyway: the thread waits for that import (or
            makes it) before its own, as two pure-Python imports side by side only take turns
            on the GIL and the command's would be slower by as much (measured: 0.5 s at 1 GB).
    """
    import threading

    def load() -> None:
        try:
            if torch_first:
                import torch  # noqa: F401
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except Exception:  # noqa: BLE001 - the import in new_figure raises it again, in order
            pass

    threading.Thread(target=load, name="ckpttools-matplotlib", daemon=True).start()


def new_figure(width: float, height: float, rows: int = 1, **grid: Any) -> tuple[Figure, Any]:
    """A figure and its axes (a list when ``rows`` > 1), on the Agg canvas."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, 1, **grid)
    return fig, axes


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes, the same bytes for the same figure."""
    import matplotlib

    out = io.BytesIO()
    if fmt == "svg":
        with matplotlib.rc_context({"svg.hashsalt": "ckpttools", "svg.fonttype": "path"}):
            fig.savefig(out, format="svg", metadata={"Date": None})
    else:
        fig.savefig(out, format="png", dpi=100, metadata={"Software": None})
    return out.getvalue()


def short_key(key: str, width: int = 48) -> str:
    """``key`` cut from the left, where the shared prefixes are."""
    return key if len(key) <= width else "..." + key[-(width - 3):]
