"""Figures for ``--plot`` and ``--html``: matplotlib (Agg), imported only when one is asked for.

A figure is built on a ``matplotlib.figure.Figure`` (no pyplot, no global state) and returned as
bytes; the CLI writes them. SVG output is made reproducible (no date, a fixed id salt) and keeps
its text as paths, so it needs no font where it is shown.
"""

from __future__ import annotations

import io
import os
import sys
import threading
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


# While matplotlib is imported beside the command's work, the interpreter hands the GIL back to a
# waiting thread after this long (the default is 5 ms): see ``warm_up``.
IMPORT_SWITCH_S = 1e-4
_WARMING: list[threading.Thread] = []


def warm_up(torch_first: bool = False) -> threading.Thread:
    """Import matplotlib in a background thread while the command does its work.

    The import takes about half a second of pure Python; the commands spend their time reading
    and in torch kernels that release the GIL, so on a second core the two overlap. Each time the
    command comes back from a read or a kernel it may wait for the importing thread to let go of
    the GIL, up to the switch interval (5 ms by default), and a chunk of ``diff`` makes a dozen
    such calls: the interval is 0.1 ms while the thread imports. Nothing matplotlib imports
    imports torch, so the two threads' imports cannot wait on each other in a circle.

    Args:
        torch_first: the command imports torch anyway: the thread waits for that import (or
            makes it) before its own, as two pure-Python imports side by side only take turns
            on the GIL and the command's would be slower by as much (measured: 0.5 s at 1 GB).

    Returns:
        The thread (a daemon: ``new_figure`` waits for it, nothing else needs to).
    """
    def load() -> None:
        before = sys.getswitchinterval()
        sys.setswitchinterval(IMPORT_SWITCH_S)
        try:
            if torch_first:
                import torch  # noqa: F401
            import_matplotlib()
        except Exception:  # noqa: BLE001 - the import in new_figure raises it again, in order
            pass
        finally:
            sys.setswitchinterval(before)

    thread = threading.Thread(target=load, name="ckpttools-matplotlib", daemon=True)
    _WARMING.append(thread)
    thread.start()
    return thread


def import_matplotlib() -> None:
    """Import matplotlib's Agg canvas and ``Figure``, without the help text of its artists.

    As each of its hundred ``Artist`` classes is defined, matplotlib writes the signature and the
    property table of its ``set()`` method, for ``help()``: about 40% of the import (0.37-0.42 ->
    0.23-0.26 s of CPU on a 2-core machine). A command that draws one figure never reads them, so
    while ckpttools imports matplotlib those two steps are made light, and they are put back after
    (``set()`` itself is unchanged, and classes defined later get their text as usual). When
    matplotlib is imported already (a notebook), or its internals have other names, nothing is
    changed.
    """
    if "matplotlib.figure" not in sys.modules:
        import matplotlib.artist as martist

        light = _LightArtistHelp(martist)
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        finally:
            light.restore()
    import matplotlib

    matplotlib.use("Agg", force=False)


class _LightArtistHelp:
    """matplotlib's ``Artist`` help-text builders swapped for light ones, until ``restore()``."""

    def __init__(self, martist: Any) -> None:
        self.martist = martist
        artist = getattr(martist, "Artist", None)
        builder = getattr(artist, "_update_set_signature_and_docstring", None)
        kwdoc = getattr(martist, "kwdoc", None)
        self.saved = (builder, kwdoc) if builder is not None and kwdoc is not None else None
        if self.saved is None:
            return

        def mark_generated(cls: Any) -> None:
            # what Artist.__init_subclass__ looks for to give each subclass its own set()
            cls.set._autogenerated_signature = True

        artist._update_set_signature_and_docstring = classmethod(mark_generated)
        martist.kwdoc = lambda _artist: ""

    def restore(self) -> None:
        if self.saved is not None:
            builder, kwdoc = self.saved
            self.martist.Artist._update_set_signature_and_docstring = classmethod(builder.__func__)
            self.martist.kwdoc = kwdoc


def new_figure(width: float, height: float, rows: int = 1, layout: str | None = "constrained",
               **grid: Any) -> tuple[Figure, Any]:
    """A figure and its axes (a list when ``rows`` > 1), on the Agg canvas; ``layout=None``
    for a figure that sets its own margins."""
    require_matplotlib()
    # matplotlib is not thread-safe: a figure is drawn once ``warm_up``'s thread is done
    while _WARMING and _WARMING[0] is not threading.current_thread():
        _WARMING.pop(0).join()
    import_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
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
        # zlib's fastest level: 15 of the chart's 155 ms went to level 6, for 1% smaller files
        fig.savefig(out, format="png", dpi=100, metadata={"Software": None},
                    pil_kwargs={"compress_level": 1})
    return out.getvalue()


def short_key(key: str, width: int = 48) -> str:
    """``key`` cut from the left, where the shared prefixes are."""
    return key if len(key) <= width else "..." + key[-(width - 3):]
