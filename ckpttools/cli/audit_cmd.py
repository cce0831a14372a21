"""``ckpttools audit``: gate checkpoints in CI (integrity, safety, finite, model, completeness,
policy, reproducibility)."""

from __future__ import annotations

import os

import click

from ckpttools.cli._figures import check_html, command_line, html_opt, write_file
from ckpttools.cli._options import CI_FORMATS, allow_download, common_options, model_opts, note

STATIC_TRUST = "Accepted everywhere; audit reads pickles statically and never runs them."


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@model_opts
@click.option("--key", default=None, metavar="K", help="Dotted path of the model state_dict.")
@click.option("--require", multiple=True, metavar="NAME",
              help="optimizer, scheduler, epoch, rng or a dotted KEY that must be present.")
@click.option("--dtype", default=None, metavar="D", help="Every floating model tensor has this dtype (bf16).")
@click.option("--max-size", default=None, metavar="SIZE", help="Largest allowed checkpoint (2GB, 500MiB).")
@click.option("--manifest", default=None, metavar="FILE",
              help="sha256 per file: written when FILE is absent, checked when it exists.")
@click.option("--allow-nonfinite", is_flag=True, default=None, help="NaN/Inf is a WARN, not a FAIL.")
@click.option("--strict-unknown", is_flag=True, default=None,
              help="Globals not proven safe FAIL the safety check (the default; kept for old "
                   "scripts). Set allow-unknown = true in the settings to make them WARN.")
@click.option("--allow", "allow", multiple=True, metavar="GLOBAL",
              help="Treat GLOBAL (module.Name or module.*) as safe; repeatable.")
@click.option("--config", "config_path", default=None, metavar="PATH",
              help="pyproject.toml, setup.cfg, or a folder holding one (default: the working folder).")
@html_opt
@common_options(CI_FORMATS, trust_help=STATIC_TRUST)
def audit(paths: tuple[str, ...], model_spec: str | None, model_args: tuple[str, ...],
          key: str | None, require: tuple[str, ...], dtype: str | None, max_size: str | None,
          manifest: str | None, allow_nonfinite: bool | None, strict_unknown: bool | None,
          allow: tuple[str, ...], config_path: str | None, html: str | None, output_format: str,
          trust: bool) -> None:
    """Audit checkpoints for CI: a PASS/WARN/FAIL row per check per file.

    PATHS are files, folders (searched recursively; a DCP or sharded folder is one checkpoint)
    or globs. Always checked: integrity, safety (pickle scan), finite (NaN/Inf). On request:
    model (--model), completeness (--require), policy (--dtype, --max-size), reproducibility
    (--manifest). Defaults come from pyproject.toml [tool.ckpttools] or setup.cfg [ckpttools]
    (or [tool:ckpttools]); the pytest plugin reads the same settings.
    Exit 0 all pass, 1 any FAIL, 2 could not run.

    \b
    Examples:
      ckpttools audit checkpoints/
      ckpttools audit ckpt.pth --model mypkg.models:Net --require optimizer --require epoch
      ckpttools audit 'runs/**/*.safetensors' --dtype bf16 --max-size 2GB --format junit
      ckpttools audit checkpoints/ --format junit --html audit.html > audit.xml
    """
    from ckpttools.cli._progress import byte_progress
    from ckpttools.ops.audit.audit import audit_checkpoints
    from ckpttools.ops.audit.config import load_settings
    from ckpttools.render.audit import render_audit

    check_html(html)
    config, source = load_settings(config_path)
    config = config.merged(model=model_spec, model_args=model_args, key=key, require=require,
                           dtype=dtype, max_size=max_size, manifest=manifest,
                           allow_nonfinite=allow_nonfinite,
                           allow_unknown=None if strict_unknown is None else not strict_unknown,
                           allow_globals=(*config.allow_globals, *allow) or None)
    if source:
        note(f"settings from {os.path.relpath(source)}")
    allow_download(*paths)  # the finite check reads every tensor's values anyway
    with byte_progress(1, "auditing") as advance:
        result = audit_checkpoints(paths, config, config_file=source, on_progress=advance)
    click.echo(render_audit(result, output_format, report=html))
    if html is not None:
        from ckpttools.render.html import audit_html

        write_file(html, audit_html(result, command_line()), "the HTML report")
    click.get_current_context().exit(0 if result.ok else 1)
