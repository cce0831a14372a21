"""``ckpttools inspect``: what a checkpoint is and what it holds."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ckpttools.cli._options import (allow_download, checkpoint_arg, common_options, is_trusted,
                                    key_opt, warn, warn_trusted)
from ckpttools.cli._figures import check_html, check_plot, command_line, html_opt, plot_opt, write_file
from ckpttools.cli._progress import byte_progress
from ckpttools.errors import CkptError
from ckpttools.formats import fileio
from ckpttools.ops.audit.scan import VERDICTS, ScanResult

if TYPE_CHECKING:
    from ckpttools.ops.inspect import InspectResult


@click.command()
@checkpoint_arg()
@key_opt("Dotted path into the checkpoint; show only that subtree.")
@click.option("--filter", "pattern", metavar="GLOB", help="Show only keys matching GLOB (*.weight).")
@click.option("--tree", is_flag=True, help="Group tensors by module with parameter counts.")
@click.option("--expand", is_flag=True, help="List repeated layers one by one.")
@click.option("--stats", "with_stats", is_flag=True,
              help="Min/max/mean/std and NaN/Inf counts per tensor (reads tensor data).")
@click.option("--allow", "allow", multiple=True, metavar="GLOBAL",
              help="Treat GLOBAL (module.Name or module.*) as safe; repeatable.")
@plot_opt
@html_opt
@common_options()
@click.pass_context
def inspect(ctx: click.Context, path: str, key: str | None, pattern: str | None, tree: bool,
            expand: bool, with_stats: bool, allow: tuple[str, ...], plot: str | None,
            html: str | None, output_format: str, trust: bool) -> None:
    """Show what a checkpoint is and what it holds, without running its pickle.

    PATH is a file or folder of any supported format (found from the bytes).
    Exit 0 clean, 1 a pickle runs code or is not proven safe (as scan), 2 unreadable.

    \b
    Examples:
      ckpttools inspect model.pth
      ckpttools inspect ckpt.pth --key model_state_dict --tree
      ckpttools inspect model.safetensors --filter '*.weight' --stats --format json
      ckpttools inspect model.safetensors --stats --plot model.png --html model.html
    """
    from ckpttools.formats.registry import open_checkpoint
    from ckpttools.ops.audit.config import load_settings
    from ckpttools.ops.audit.scan import scan_checkpoint
    from ckpttools.ops.inspect import inspect_checkpoint
    from ckpttools.render.inspect import render_inspect

    # NOTE: key trees nest as deep as the checkpoint (600-deep dicts are legitimate); the tree
    # walks are Python-to-Python calls, which need no C stack on CPython 3.11+
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    plot_fmt = check_plot(plot)
    check_html(html, figures=True)
    trust = is_trusted(ctx, trust)
    warn_trusted(trust)
    allow = (*load_settings()[0].allow_globals, *allow)
    if with_stats and pattern is None and key is None:
        allow_download(path)  # every tensor's values are read anyway
    # the scan's verdict covers every pickle a loader could run, not only the one listed
    scan = scan_checkpoint(path, allow=allow) if fileio.exists(path) else None
    try:
        reader = open_checkpoint(path, trust=trust)
    except CkptError:
        if scan is None or not any(f.safety == "unsafe" for f in scan.files):
            raise
        _warn(scan)  # a pickle that runs code is a finding even in a file inspect cannot list
        ctx.exit(1)
    with reader:
        total = sum(t.nbytes for t in reader.tensor_entries()) if with_stats else 0
        with byte_progress(total, "reading tensors") as advance:
            result = inspect_checkpoint(reader, key=key, pattern=pattern, with_stats=with_stats,
                                        on_progress=advance, allow=allow)
    click.echo(render_inspect(result, output_format, tree=tree, expand=expand))
    _figures(result, plot, plot_fmt, html)
    code = scan.exit_code if scan is not None else 0
    if scan is not None:
        _warn(scan)
    ctx.exit(1 if not result.ok or code == 1 else code)


def _figures(result: InspectResult, plot: str | None, plot_fmt: str | None, html: str | None) -> None:
    if plot is None and html is None:
        return
    from ckpttools.render.plots.inspect import plot_inspect

    if plot is not None and plot_fmt is not None:
        write_file(plot, plot_inspect(result, plot_fmt), "the inspect figure")
    if html is not None:
        from ckpttools.render.html import inspect_html

        write_file(html, inspect_html(result, command_line(), plot_inspect(result, "svg")),
                   "the HTML report")


def _warn(scan: ScanResult) -> None:
    """One warning line per file the scan did not find safe."""
    for f in scan.files:
        unsafe = sorted({g.qualname for p in f.pickles for g in p.globals if g.safety == "unsafe"})
        found = [x.message for p in f.pickles for x in p.findings if x.safety == "unsafe"]
        if unsafe:
            warn(f"{f.path}: unsafe global {', '.join(unsafe)}; it runs code on load")
        elif found:
            warn(f"{f.path}: {VERDICTS[f.safety].lower()}: {found[0]}")
        elif f.safety != "safe":
            names = ", ".join(f.unknown_globals) or f.error or "see ckpttools scan"
            warn(f"{f.path}: {VERDICTS[f.safety].lower()} ({names})")
