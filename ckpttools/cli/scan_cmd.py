"""``ckpttools scan``: which globals the pickles of a checkpoint would import, without running them."""

from __future__ import annotations

import click

from ckpttools.cli._options import CI_FORMATS, common_options, error, warn

STATIC_TRUST = "Accepted everywhere; scan reads pickles statically and never runs them."


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@common_options(CI_FORMATS, trust_help=STATIC_TRUST)
def scan(paths: tuple[str, ...], output_format: str, trust: bool) -> None:
    """Scan the pickles of checkpoints for code, statically (nothing is loaded or run).

    PATHS are files, folders (searched recursively) or globs: torch zip (every pickle in it),
    legacy torch files, bare pickles, DCP .metadata; safetensors headers are validated.
    Every global is listed as safe (what torch.load(weights_only=True) allows), unknown
    (a third-party class: loading needs its code and --trust) or unsafe (can run code).
    Exit 0 clean, 1 anything unsafe (even in a malformed file), 2 a file could not be read.

    \b
    Examples:
      ckpttools scan model.pth
      ckpttools scan checkpoints/ 'downloads/**/*.bin' --format json
    """
    from ckpttools.ops.audit.scan import scan_checkpoint
    from ckpttools.render.scan import render_scan

    from ckpttools.errors import UnknownFormatError

    result = scan_checkpoint(paths)
    unreadable = [f for f in result.files if f.safety == "error"]
    if unreadable and len(unreadable) == len(result.files):  # nothing to report: errors only
        for f in unreadable[:-1]:
            error(_unreadable(f.path, f.error))
        raise UnknownFormatError(_unreadable(unreadable[-1].path, unreadable[-1].error))
    click.echo(render_scan(result, output_format))
    for f in unreadable:
        error(_unreadable(f.path, f.error))
    for f in result.files:
        if f.safety == "unsafe":
            names = sorted({g.qualname for p in f.pickles for g in p.globals if g.safety == "unsafe"})
            warn(f"{f.path}: unsafe pickle content ({', '.join(names) or 'dynamic'}); do not load it")
    click.get_current_context().exit(result.exit_code)


def _unreadable(path: str, problem: str) -> str:
    return f"{path}: {problem or 'cannot be read'}; pass a checkpoint (torch.save, safetensors, DCP .metadata)"
