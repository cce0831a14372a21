"""``--plot FILE`` and ``--html FILE``: the options, the early checks, and writing the file.

Both are checked before any work (extension, matplotlib, a folder the file can be written in)
so a long diff never ends in a usage error; the file is written atomically after the report is
printed.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ckpttools.cli._options import note
from ckpttools.errors import OutputError

F = TypeVar("F", bound=Callable[..., Any])


def plot_opt(f: F) -> F:
    return click.option("--plot", "plot", default=None, metavar="FILE",
                        type=click.Path(dir_okay=False, path_type=str),
                        help="Also draw the figure to FILE (.png or .svg); needs ckpttools[plot].")(f)


def html_opt(f: F) -> F:
    return click.option("--html", "html", default=None, metavar="FILE",
                        type=click.Path(dir_okay=False, path_type=str),
                        help="Also write a self-contained HTML report to FILE.")(f)


def check_plot(path: str | None, torch_first: bool = False, warm: bool = True) -> str | None:
    """The figure format for ``--plot`` (``png``/``svg``), checked before the work starts;
    ``torch_first`` for a command that imports torch anyway (see ``warm_up``); ``warm=False``
    for one that starts ``warm_up`` itself, later in its work."""
    if path is None:
        return None
    from ckpttools.render.plots import figure_format, require_matplotlib, warm_up

    fmt = figure_format(path)
    check_folder(path, "--plot")
    require_matplotlib("--plot")
    if warm:
        warm_up(torch_first)
    return fmt


def check_html(path: str | None, figures: bool = False) -> None:
    """``--html``'s folder, checked before the work; matplotlib only where the page carries a
    figure."""
    if path is None:
        return
    check_folder(path, "--html")
    if figures:
        from ckpttools.render.plots import require_matplotlib

        require_matplotlib("--html")


def check_folder(path: str, option: str) -> None:
    """Refuse, before the work, a file that could not be written after it.

    Raises:
        OutputError: the folder is missing, is not a folder, or may not be written in (its
            permissions, a read-only file system, an immutable folder).
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: {folder} is a file, not a folder; give a path in a "
                          f"folder")
    if not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: folder {folder} does not exist; create it or give "
                          f"a path in an existing folder")
    # access() also answers for root: a read-only mount (EROFS) or an immutable folder (EPERM)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: folder {folder} cannot be written in; give a path "
                          f"in a folder you can write")


def write_file(dest: str, data: str | bytes, what: str) -> None:
    """Write ``data`` to ``dest`` atomically and say so on stderr."""
    from ckpttools.formats.writers.atomic import atomic_output

    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with atomic_output(dest) as tmp, open(tmp, "wb") as f:
            f.write(raw)
    except OSError as e:  # the folder changed since check_folder, or the disk is full
        raise OutputError(f"{dest}: {what} could not be written ({e.strerror or e}); give a "
                          f"path in a folder you can write") from e
    note(f"wrote {what} to {dest}")


def command_line() -> str:
    """The command as typed (``ckpttools diff a.pt b.pt --plot x.png``), for the HTML page."""
    ctx = click.get_current_context()
    argv = sys.argv[1:]
    entry = os.path.normpath(sys.argv[0])
    if argv and (os.path.basename(entry) == "ckpttools"
                 or entry.endswith(os.path.join("ckpttools", "__main__.py"))):
        return "ckpttools " + shlex.join(argv)
    # called from Python (CliRunner, the API): rebuild it from the parsed values, arguments first
    params = sorted(ctx.command.params, key=lambda p: not isinstance(p, click.Argument))
    words = [ctx.info_name or ""]
    for param in params:
        value = ctx.params.get(param.name or "")
        if value in (None, False, ()) or value == param.default or (param.name, value) == ("output_format", "table"):
            continue
        flag = [] if isinstance(param, click.Argument) else [param.opts[0]]
        for v in value if isinstance(value, tuple) else (value,):
            words += flag + ([] if v is True else [str(v)])
    return "ckpttools " + shlex.join(words)
