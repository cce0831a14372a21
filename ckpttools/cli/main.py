"""The ``ckpttools`` group: global options, the error boundary and command registration.

The CLI contract lives here: stdout carries the report only; every error is one line on stderr,
``ckpttools: error: <path or option>: <what is wrong>; <what to do>``, exit 2 (usage errors
included); a finding is exit 1; clean is exit 0; warnings go to stderr as ``warning: ...``.
"""

from __future__ import annotations

import gc
import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import click

from ckpttools import __version__
from ckpttools.cli._options import global_options, is_debug, is_quiet
from ckpttools import errors
from ckpttools.errors import EXIT_ERROR, CkptError

PROG = "ckpttools"
# The cyclic collector runs after this many new container objects (Python's default is 700).
# A command builds long-lived objects by the hundred thousand (`import torch` alone: 166,000;
# a 20,000-tensor listing: 60,000) and frees them by reference counting; collecting every 700
# rescans them all and cost 0.12 s of `import torch`'s 1.6 s, and 15% of `inspect`. Garbage
# cycles are still collected, a million allocations apart.
YOUNG_OBJECTS = 1_000_000
# The commands in the order of a user's workflow, which is the order --help lists them in:
# name -> (module, attribute). A command's module is imported when that command runs (click's
# lazy-loading pattern): `ckpttools diff` does not pay for the imports of `inspect` and `scan`.
COMMANDS = {
    "inspect": ("ckpttools.cli.inspect_cmd", "inspect"),
    "diff": ("ckpttools.cli.diff_cmd", "diff"),
    "diagnose": ("ckpttools.cli.diagnose_cmd", "diagnose"),
    "remap": ("ckpttools.cli.remap_cmd", "remap"),
    "convert": ("ckpttools.cli.convert_cmd", "convert"),
    "verify-resume": ("ckpttools.cli.resume_cmd", "verify_resume"),
    "audit": ("ckpttools.cli.audit_cmd", "audit"),
    "scan": ("ckpttools.cli.scan_cmd", "scan"),
}
WORKFLOW = tuple(COMMANDS)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _debug_requested(ctx: click.Context) -> bool:
    return is_debug(ctx) or os.environ.get("CKPTTOOLS_DEBUG") == "1"


def _warning_printer(ctx: click.Context) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``warning: ...`` lines on stderr.

    Only ckpttools' own degradations are the user's business; torch's import-time notices
    ("Failed to initialize NumPy") are not, unless ``--debug`` asks for everything.
    """

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if is_quiet(ctx):
            return
        if _debug_requested(ctx) or os.path.abspath(filename).startswith(_PACKAGE_DIR):
            click.echo(f"warning: {one_line(str(message))}", err=True)

    return show


def one_line(text: str) -> str:
    """Collapse a message onto one line (library messages sometimes quote multi-line text)."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


# What to do, for library messages that say only what is wrong (most specific class first).
NEXT_STEP: tuple[tuple[type[CkptError], str], ...] = (
    (errors.CheckpointNotFoundError, "check the path"),
    (errors.UnreadableCheckpointError, "check the file's permissions"),
    (errors.UnknownFormatError, "pass a PyTorch checkpoint (torch.save, safetensors, sharded, DCP)"),
    (errors.CorruptCheckpointError, "the file is damaged; save or download it again"),
    (errors.UnsafeCheckpointError, "rerun with --trust only if you trust the file"),
    (errors.UnsupportedError, "see the command's --help for what it supports"),
    (errors.OutputError, "choose another destination or pass --force"),
    (errors.InvalidArgumentError, "fix the option's value"),
    (errors.KeyNotFoundError, "list the keys with ckpttools inspect"),
    (errors.SpecError, "fix the spec, see the command's --help"),
    (CkptError, "rerun with --debug for details"),
)


def with_next_step(e: CkptError) -> str:
    """The error's message, with what to do appended when the message does not say."""
    message = one_line(str(e))
    if ";" in message:
        return message
    return message + "; " + next(hint for cls, hint in NEXT_STEP if isinstance(e, cls))


class ErrorLine(click.ClickException):
    """A ``ClickException`` whose message is already the contract's one line."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(one_line(message))
        self.exit_code = exit_code


def _help_hint(ctx: click.Context | None) -> str:
    path = ctx.command_path if ctx is not None else PROG
    return f"see '{path} --help'"


def _param_name(param: click.Parameter | None) -> str | None:
    if param is None:
        return None
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.human_readable_name or str(param.name)).upper()


def usage_line(e: click.UsageError) -> str:
    """Click's usage errors (four lines: Usage / Try / blank / Error) as the contract's one line."""
    hint = _help_hint(e.ctx)
    if isinstance(e, click.NoSuchOption):
        near = f" (did you mean {', '.join(sorted(e.possibilities))}?)" if e.possibilities else ""
        return f"{e.option_name}: no such option{near}; {hint}"
    if isinstance(e, click.BadOptionUsage):
        message = re.sub(r"^Option '[^']*' ", "", e.message.rstrip("."))
        return f"{e.option_name}: {message.replace('requires an argument', 'needs a value')}; {hint}"
    if isinstance(e, click.MissingParameter):
        name = _param_name(e.param) or "argument"
        kind = "option" if isinstance(e.param, click.Option) else "argument"
        return f"{name}: missing {kind}; {hint}"
    if isinstance(e, click.BadParameter):
        name = e.param_hint if isinstance(e.param_hint, str) else _param_name(e.param)
        if isinstance(e.param_hint, Sequence) and not isinstance(e.param_hint, str):
            name = "/".join(e.param_hint)
        message = e.message.rstrip(".")
        return f"{(name or 'value').strip(chr(39))}: {message}; {hint}"
    subject = e.ctx.info_name if e.ctx is not None else PROG
    message = e.message.rstrip(".")
    unknown = re.match(r"No such command '([^']*)'\.?(.*)", message, re.S)
    if unknown:
        near = one_line(unknown.group(2)).rstrip("?").lower()
        return f"{unknown.group(1)}: no such command{f' ({near}?)' if near else ''}; {hint}"
    return f"{subject}: {message}" + ("" if ";" in message else f"; {hint}")


def error_line(e: click.ClickException) -> str:
    """The one stderr line for any error that reaches the top."""
    if isinstance(e, ErrorLine):
        body = e.message
    elif isinstance(e, click.UsageError):
        body = usage_line(e)
    elif isinstance(e, click.FileError):
        body = f"{e.ui_filename}: {e.message}; check the path"
    else:
        body = e.format_message()
    return f"{PROG}: error: {one_line(body)}"


_NB_HYPHEN = "\u2011"


class CkptFormatter(click.HelpFormatter):
    """Help text wrapped at spaces only: an option named in prose (``--no-verify``) stays whole."""

    def write_text(self, text: str) -> None:
        super().write_text(text.replace("-", _NB_HYPHEN))

    def write_dl(self, rows: Sequence[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        super().write_dl([(a, b.replace("-", _NB_HYPHEN)) for a, b in rows], col_max, col_spacing)

    def getvalue(self) -> str:
        return super().getvalue().replace(_NB_HYPHEN, "-")


class CkptContext(click.Context):
    """A context whose help formatter keeps options whole."""

    formatter_class = CkptFormatter


class CkptGroup(click.Group):
    """The group: commands in workflow order, and the error boundary.

    ``invoke`` turns library errors into one line and an exit code inside click, so that
    ``CliRunner`` sees what users see; ``main`` prints every error, click's usage errors
    included, as that one line.
    """

    context_class = CkptContext

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(self.commands) | set(COMMANDS)
        known = [name for name in WORKFLOW if name in names]
        return known + sorted(names - set(known))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            command.context_class = CkptContext
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its first sentence in full (click would cut it at the width)."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                first = (command.short_help or command.help or "").split("\n\n")[0]
                rows.append((name, " ".join(first.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(ctx)
            try:
                return super().invoke(ctx)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except CkptError as e:
                if _debug_requested(ctx):
                    raise
                raise ErrorLine(with_next_step(e), e.exit_code) from e
            except KeyboardInterrupt:
                raise click.Abort() from None
            except Exception as e:
                if _debug_requested(ctx):
                    raise
                raise ErrorLine(f"internal error: {type(e).__name__}: {e}; rerun with --debug "
                                "for the traceback and report it") from e

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``cli()``, which is how the ``ckpttools`` script runs the group: the process ends
        with it (in-process callers and ``CliRunner`` call ``main``)."""
        try:
            return self.main(*args, **kwargs)
        finally:
            before_exit()

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_OBJECTS, *thresholds[1:])
        try:
            rv = super().main(args, prog_name or PROG, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.ClickException as e:
            click.echo(error_line(e), err=True)
            code = e.exit_code if e.exit_code else EXIT_ERROR
        except click.Abort:
            click.echo(f"{PROG}: error: interrupted; rerun the command", err=True)
            code = EXIT_ERROR
        finally:
            gc.set_threshold(*thresholds)
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(PROG, cls=CkptGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name=PROG)
@global_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Inspect, diff, diagnose, remap, convert, verify and audit PyTorch checkpoints.

    Exit codes, for every command: 0 clean, 1 the check found something, 2 could not do the job
    (one line on stderr: 'ckpttools: error: <path or option>: <what is wrong>; <what to do>').
    The global options also work after the command name.

    \b
    Examples:
      ckpttools inspect model.pth
      ckpttools diff model.pth --model mypkg.models:Net -a num_classes=10
      ckpttools convert model.pth model.safetensors
    """
    ctx.ensure_object(dict)




def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting."""
    return int(cli.main(args=argv, prog_name=PROG, standalone_mode=False))


def before_exit() -> None:
    """Collect the command's garbage once, then freeze every object left.

    Only for a process that ends next. At exit the interpreter collects again as it tears
    the modules down, and each collection walks every object alive; after ``import torch``
    that is some 250,000 objects, and the walks cost about 0.3 s of CPU, more than a model
    command itself. Frozen objects are not walked again, while ``atexit`` handlers, streams
    and finalizers run as before: the one collection here has already finalised the cycles
    the command left.
    """
    gc.collect()
    gc.freeze()


def run() -> NoReturn:
    """The process entry point (``python -m ckpttools``): run the CLI and exit with its code."""
    code = main()
    before_exit()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
