"""The ``ckpttools`` group: global options, the error boundary and command registration."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TextIO

import click

from ckpttools import __version__
from ckpttools.errors import EXIT_ERROR, CkptError


def _debug_requested(ctx: click.Context) -> bool:
    # ctx.params holds --debug as soon as the group's options are parsed, before its callback
    return bool(ctx.params.get("debug")) or os.environ.get("CKPTTOOLS_DEBUG") == "1"


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _warning_printer(debug: bool) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``warning: ...`` lines on stderr.

    Only ckpttools' own degradations are the user's business; torch's import-time notices
    ("Failed to initialize NumPy") are not, unless ``--debug`` asks for everything.
    """

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if debug or os.path.abspath(filename).startswith(_PACKAGE_DIR):
            click.echo(f"warning: {message}", err=True)

    return show


class CkptGroup(click.Group):
    """A group whose ``invoke`` turns library errors into one line and an exit code.

    Inside click rather than around ``main()`` so that ``CliRunner`` sees what users see.
    """

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(_debug_requested(ctx))
            try:
                return super().invoke(ctx)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except CkptError as e:
                if _debug_requested(ctx):
                    raise
                error = click.ClickException(str(e))
                error.exit_code = e.exit_code
                raise error from e
            except KeyboardInterrupt:
                raise click.Abort() from None
            except Exception as e:
                if _debug_requested(ctx):
                    raise
                error = click.ClickException(
                    f"internal error: {type(e).__name__}: {e} (rerun with --debug)")
                error.exit_code = EXIT_ERROR
                raise error from e


@click.group(cls=CkptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ckpttools")
@click.option("--trust", is_flag=True,
              help="Allow full unpickling (runs code from the file) for files you vouch for.")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, trust: bool, debug: bool) -> None:
    """Inspect, diff, diagnose, convert, verify and audit PyTorch checkpoints.

    \b
    Examples:
      ckpttools inspect model.pth
      ckpttools diff model.pth --model mypkg.models:Net -a num_classes=10
      ckpttools convert model.pth model.safetensors
    """
    ctx.ensure_object(dict)
    ctx.obj["trust"] = trust
    ctx.obj["debug"] = debug


def _register() -> None:
    from ckpttools.cli import inspect_cmd
    from ckpttools.cli import resume_cmd
    from ckpttools.cli import convert_cmd
    from ckpttools.cli import diagnose_cmd
    from ckpttools.cli import diff_cmd, remap_cmd
    from ckpttools.cli import audit_cmd, scan_cmd

    cli.add_command(inspect_cmd.inspect)
    cli.add_command(resume_cmd.verify_resume)
    cli.add_command(convert_cmd.convert)
    cli.add_command(diagnose_cmd.diagnose)
    cli.add_command(diff_cmd.diff)
    cli.add_command(remap_cmd.remap)
    cli.add_command(scan_cmd.scan)
    cli.add_command(audit_cmd.audit)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting."""
    try:
        rv = cli.main(args=argv, prog_name="ckpttools", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_ERROR
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
