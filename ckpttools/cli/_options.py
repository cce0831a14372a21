"""Options and arguments shared by several commands, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FORMATS = ("table", "json", "markdown")


def checkpoint_arg(name: str = "path") -> Callable[[F], F]:
    """A checkpoint path argument (file or directory); existence is checked by the reader."""
    return click.argument(name, type=click.Path(dir_okay=True, path_type=str))


def output_format_opt(choices: tuple[str, ...] = OUTPUT_FORMATS) -> Callable[[F], F]:
    """``--format``: how the report is rendered on stdout."""
    return click.option("--format", "output_format", type=click.Choice(choices),
                        default=choices[0], show_default=True, help="Output format.")


def key_opt(help_text: str = "Dotted path of the state_dict inside a nested checkpoint.") -> Callable[[F], F]:
    """``--key K``: a dotted path into a nested checkpoint."""
    return click.option("--key", "key", default=None, metavar="K", help=help_text)


def trust_opt(f: F) -> F:
    """``--trust`` on a command too, so it may follow the command name."""
    return click.option("--trust", "trust", is_flag=True,
                        help="Allow full unpickling (runs code from the file).")(f)


def model_opts(f: F) -> F:
    """``--model SPEC`` and repeatable ``-a NAME=VALUE`` for building a model."""
    f = click.option("-a", "--arg", "model_args", multiple=True, metavar="NAME=VALUE",
                     help="Keyword argument for the model (value parsed as JSON, else a string).")(f)
    return click.option("--model", "model_spec", metavar="SPEC",
                        help="Model: package.module:attr, path/file.py:attr, or a JSON signature.")(f)


def is_trusted(ctx: click.Context, local: bool = False) -> bool:
    """Whether ``--trust`` was given before or after the command name."""
    return local or bool((ctx.find_root().obj or {}).get("trust"))


def warn_trusted(trust: bool) -> None:
    """Say on stderr that full unpickling is on."""
    if trust:
        click.echo("warning: --trust given: pickled code in the checkpoint may run", err=True)
