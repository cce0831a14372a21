"""``ckpttools scan``: which globals the pickles of a checkpoint would import, without running them."""

from __future__ import annotations

import os

import click

from ckpttools.cli._figures import check_html, command_line, html_opt, write_file
from ckpttools.cli._options import CI_FORMATS, common_options, error, warn

STATIC_TRUST = "Accepted everywhere; scan reads pickles statically and never runs them."

ALLOW_HELP = ("Treat GLOBAL (module.Name, or module.* for a package) as safe; repeatable. "
              "Lifts 'not proven safe' only, never a known code-execution gadget.")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--allow", "allow", multiple=True, metavar="GLOBAL", help=ALLOW_HELP)
@click.option("--config", "config_path", default=None, metavar="PATH",
              help="pyproject.toml, setup.cfg, or a folder holding one, whose allow-globals is read "
                   "(default: the working folder).")
@html_opt
@common_options(CI_FORMATS, trust_help=STATIC_TRUST)
def scan(paths: tuple[str, ...], allow: tuple[str, ...], config_path: str | None,
         html: str | None, output_format: str, trust: bool) -> None:
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
      ckpttools scan checkpoints/ --format sarif --html scan.html > scan.sarif
    """
    from ckpttools.ops.audit.config import load_settings
    from ckpttools.ops.audit.scan import scan_checkpoint
    from ckpttools.render.scan import render_scan

    from ckpttools.errors import UnknownFormatError

    check_html(html)
    config, _ = load_settings(config_path)
    result = scan_checkpoint(paths, allow=(*config.allow_globals, *allow))
    unreadable = [f for f in result.files if f.safety == "error"]
    if unreadable and len(unreadable) == len(result.files):  # nothing to report: errors only
        for f in unreadable[:-1]:
            error(_unreadable(f.path, f.error))
        raise UnknownFormatError(_unreadable(unreadable[-1].path, unreadable[-1].error))
    click.echo(render_scan(result, output_format, report=html))
    if html is not None:
        from ckpttools.render.html import scan_html

        write_file(html, scan_html(result, command_line()), "the HTML report")
    for f in unreadable:
        error(_unreadable(f.path, f.error))
    for f in result.files:
        if f.safety == "unsafe":
            names = sorted({g.qualname for p in f.pickles for g in p.globals if g.safety == "unsafe"})
            found = [x.message for p in f.pickles for x in p.findings if x.safety == "unsafe"]
            warn(f"{f.path}: pickle can run code or is hostile "
                 f"({', '.join(names) or (found or ['an ambiguous archive'])[0]}); do not load it")
        elif f.safety == "unknown":
            warn(f"{f.path}: not proven safe ({', '.join(f.unknown_globals)}); allow them with "
                 "--allow if you trust them")
    click.get_current_context().exit(result.exit_code)


def _unreadable(path: str, problem: str) -> str:
    for prefix in (f"{path}: ", f"{os.path.basename(path)}: "):
        problem = problem.removeprefix(prefix)
    return f"{path}: {problem or 'cannot be read'}; it cannot be judged: pass a whole checkpoint"
