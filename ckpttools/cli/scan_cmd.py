"""``ckpttools scan``: which globals the pickles of a checkpoint would import, without running them."""

from __future__ import annotations

import click

from ckpttools.cli._options import output_format_opt

ALLOW_HELP = ("Treat GLOBAL (module.Name, or module.* for a package) as safe; repeatable. "
              "Lifts 'not proven safe' only, never a known code-execution gadget.")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--allow", "allow", multiple=True, metavar="GLOBAL", help=ALLOW_HELP)
@click.option("--config", "config_dir", default=".", show_default=True, metavar="DIR",
              help="Folder whose pyproject.toml [tool.ckpttools] allow-globals is read.")
@output_format_opt(("text", "table", "json"))
def scan(paths: tuple[str, ...], allow: tuple[str, ...], config_dir: str,
         output_format: str) -> None:
    """Scan the pickles of checkpoints for code, statically (nothing is loaded or run).

    PATHS are files, folders (searched recursively) or globs: every pickle torch.load could
    unpickle (zip, legacy, legacy tar) and every record or stream that parses as one (nested
    archives, gzip/bz2/xz, .npy/.npz object arrays); safetensors headers are validated.
    A global is safe only if it is on the reviewed allowlist (docs/safety.md). Verdicts:
    safe; NOT PROVEN SAFE (a global off the allowlist); DANGEROUS (runs code, or an
    ambiguous archive); CANNOT JUDGE (truncated, corrupt, not a checkpoint).
    Exit 0 all safe, 1 dangerous or not proven safe, 2 a file could not be judged.

    \b
    Examples:
      ckpttools scan model.pth
      ckpttools scan ckpt.pth --allow mypkg.config.TrainConfig
      ckpttools scan checkpoints/ 'downloads/**/*.bin' --format json
    """
    from ckpttools.ops.audit.config import load_config
    from ckpttools.ops.audit.scan import scan_checkpoint
    from ckpttools.render.scan import render_scan

    config, _ = load_config(config_dir)
    result = scan_checkpoint(paths, allow=(*config.allow_globals, *allow))
    click.echo(render_scan(result, output_format))
    for f in result.files:
        if f.safety == "unsafe":
            click.echo(f"error: {f.path}: pickle can run code; do not load it", err=True)
        elif f.safety == "unknown":
            click.echo(f"error: {f.path}: not proven safe ({', '.join(f.unknown_globals)}); "
                       "allow them with --allow if you trust them", err=True)
        elif f.safety == "error":
            click.echo(f"error: {f.path}: {f.error}; it cannot be judged", err=True)
    click.get_current_context().exit(result.exit_code)
