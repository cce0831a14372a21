"""``ckpttools diagnose``: explain a ``load_state_dict`` error and give the fix."""

from __future__ import annotations

import sys

import click

from ckpttools.cli._options import common_options, is_trusted, key_opt, model_opts, warn_trusted


# The first bytes of files that are checkpoints, not error texts: zip, pickle, safetensors header.
_BINARY_STARTS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _read_text(file: str | None) -> str:
    if file in (None, "-"):
        if file is None and sys.stdin.isatty():
            raise click.UsageError("give FILE, - (stdin) or --checkpoint PATH --model SPEC")
        return sys.stdin.read()
    with open(file, "rb") as f:
        data = f.read()
    if data.startswith(_BINARY_STARTS) or b"\x00" in data[:4096]:
        from ckpttools.errors import UnsupportedError

        raise UnsupportedError(f"{file}: a checkpoint, not the text of an error; diagnose it with "
                               f"ckpttools diagnose --checkpoint {file} --model SPEC")
    return data.decode("utf-8", errors="replace")


def _from_files(checkpoint: str, spec: str, args: tuple[str, ...], key: str | None,
                trust: bool, allow_tied: bool) -> object:
    from ckpttools.formats.registry import open_checkpoint
    from ckpttools.ops.model_spec import load_model, parse_model_args
    from ckpttools.ops.diagnose.diagnosis import diagnose_checkpoint

    model = load_model(spec, parse_model_args(args))
    with open_checkpoint(checkpoint, trust=trust) as reader:
        return diagnose_checkpoint(reader, model, key=key, model_name=spec,
                                   allow_tied=allow_tied)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True, exists=True))
@click.option("--checkpoint", metavar="PATH", help="Diagnose from the checkpoint and --model instead.")
@model_opts
@key_opt()
@click.option("--allow-tied", is_flag=True,
              help="With --checkpoint: accept tied aliases the checkpoint leaves out.")
@common_options()
@click.pass_context
def diagnose(ctx: click.Context, file: str | None, checkpoint: str | None, model_spec: str | None,
             model_args: tuple[str, ...], key: str | None, allow_tied: bool, trust: bool,
             output_format: str) -> None:
    """Explain why load_state_dict failed, rank the causes and give the fix.

    \b
    Examples:
      ckpttools diagnose error.log
      pbpaste | ckpttools diagnose -
      ckpttools diagnose --checkpoint model.pth --model mypkg.models:Net -a num_classes=10

    Exit codes: 0 a cause was found, 1 no known cause fits (or the text names no key),
    2 no load_state_dict error in the input (or the input could not be read).
    """
    from ckpttools.errors import NoLoadErrorFound
    from ckpttools.ops.diagnose.diagnosis import NO_ERROR_MESSAGE, diagnose_text
    from ckpttools.render.diagnose import render_diagnosis

    if checkpoint and file:
        raise click.UsageError("give either FILE or --checkpoint, not both")
    if checkpoint and not model_spec:
        raise click.UsageError("--checkpoint needs --model SPEC")
    trusted = is_trusted(ctx, trust)
    warn_trusted(trusted and bool(checkpoint))
    if checkpoint:
        result = _from_files(checkpoint, model_spec or "", model_args, key, trusted, allow_tied)
    else:
        result = diagnose_text(_read_text(file))
        if not result.found:
            source = "stdin" if file in (None, "-") else file
            raise NoLoadErrorFound(f"{source}: {NO_ERROR_MESSAGE}; give the whole output that ends in "
                                   "'Error(s) in loading state_dict', or use --checkpoint PATH --model SPEC")
    click.echo(render_diagnosis(result, output_format), nl=False)  # type: ignore[arg-type]
    ctx.exit(0 if result.ok else 1)  # type: ignore[attr-defined]
