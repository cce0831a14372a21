"""Options and arguments shared by several commands, declared once.

The global options (``--format``, ``--trust``, ``--debug``, ``--quiet``) are declared on the group
and again on every command through ``common_options``, so that they work before or after the
command name; a command's own value wins over the group's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FORMATS = ("table", "json", "markdown")
CI_FORMATS = (*OUTPUT_FORMATS, "junit", "github", "sarif")
# Spellings older releases used; accepted with a warning on stderr.
FORMAT_ALIASES = {"text": "table"}


def _root_obj(ctx: click.Context) -> dict[str, Any]:
    root = ctx.find_root()
    root.ensure_object(dict)
    return root.obj  # type: ignore[no-any-return]


def is_quiet(ctx: click.Context | None = None) -> bool:
    """Whether ``--quiet`` was given anywhere on the command line."""
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx and _root_obj(ctx).get("quiet"))


def is_debug(ctx: click.Context | None = None) -> bool:
    """Whether ``--debug`` was given anywhere on the command line."""
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx and _root_obj(ctx).get("debug"))


def warn(message: str) -> None:
    """``warning: <message>`` on stderr, unless ``--quiet``."""
    if not is_quiet():
        click.echo(f"warning: {message}", err=True)


def note(message: str) -> None:
    """An informational line on stderr (what was written, which settings were read), unless
    ``--quiet``."""
    if not is_quiet():
        click.echo(message, err=True)


def error(message: str) -> None:
    """An error line on stderr for a job that goes on (one unreadable file among several)."""
    click.echo(f"ckpttools: error: {' '.join(message.split())}", err=True)


class FormatChoice(click.Choice):
    """``click.Choice`` over report formats that also takes the old spellings (``text``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.lower() in FORMAT_ALIASES:
            new = FORMAT_ALIASES[value.lower()]
            if new in self.choices:
                warn(f"--format {value} is now --format {new}")
                return new
        return super().convert(value, param, ctx)


def _flag_to_root(name: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def store(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            _root_obj(ctx)[name] = True

    return store


def _resolve_trust(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        _root_obj(ctx)["trust"] = True
    return bool(_root_obj(ctx).get("trust"))


def _format_resolver(choices: tuple[str, ...]) -> Callable[[click.Context, click.Parameter, str | None], str]:
    def resolve(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
        if value is not None:
            return value
        given = _root_obj(ctx).get("format")
        if given is None:
            return choices[0]
        if given not in choices:
            raise click.BadParameter(f"{given} is not a format of '{ctx.info_name}'; use one of "
                                     f"{', '.join(choices)}", ctx=ctx, param=param)
        return str(given)

    return resolve


def _set_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
    if value is not None:
        from ckpttools.formats import remote  # only now: local runs never load it

        remote.SETTINGS.timeout = value


def allow_download(*paths: str) -> None:
    """For a command that reads every byte of its inputs anyway (convert, ``inspect --stats``,
    audit, ``diff A B``): a URL whose server ignores ``Range`` is downloaded once into a
    temporary file, with a warning, instead of refused."""
    from ckpttools.formats import fileio

    if any(fileio.is_url(p) for p in paths):
        from ckpttools.formats import remote  # only now: local runs never load it

        remote.SETTINGS.whole_file_ok = True


def timeout_opt(f: F) -> F:
    """``--timeout SECONDS`` for URLs (http(s)://, hf://, s3://)."""
    return click.option("--timeout", type=click.FloatRange(min=0.001), default=None, metavar="SECONDS",
                        expose_value=False, callback=_set_timeout,
                        help="Seconds to wait for a server when PATH is a URL (default 60).")(f)


def global_options(f: F) -> F:
    """The group's copies of the global options: values land in ``ctx.obj`` for the command."""
    f = timeout_opt(f)
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_flag_to_root("quiet"),
                     help="Print only the report and errors: no warnings, notes or progress.")(f)
    f = click.option("--debug", is_flag=True, expose_value=False, callback=_flag_to_root("debug"),
                     help="Show the full traceback on errors (also CKPTTOOLS_DEBUG=1).")(f)
    f = click.option("--trust", is_flag=True, expose_value=False, callback=_flag_to_root("trust"),
                     help="Allow full unpickling (runs code from the file) for files you vouch for.")(f)

    def store_format(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            _root_obj(ctx)["format"] = value

    return click.option("--format", "output_format", type=FormatChoice(CI_FORMATS), default=None,
                        expose_value=False, callback=store_format,
                        help="Report format: table (default), json, markdown; audit and scan also "
                             "junit, github, sarif.")(f)


def common_options(formats: tuple[str, ...] = OUTPUT_FORMATS,
                   trust_help: str = "Allow full unpickling (runs code from the file).") -> Callable[[F], F]:
    """``--format`` (passed as ``output_format``), ``--trust`` (passed as ``trust``), ``--debug``
    and ``--quiet`` on a command; each also works before the command name."""

    def decorate(f: F) -> F:
        f = timeout_opt(f)
        f = click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                         callback=_flag_to_root("quiet"),
                         help="Print only the report and errors.")(f)
        f = click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                         callback=_flag_to_root("debug"),
                         help="Show the full traceback on errors.")(f)
        f = click.option("--trust", "trust", is_flag=True, callback=_resolve_trust, help=trust_help)(f)
        return click.option("--format", "output_format", type=FormatChoice(formats), default=None,
                            callback=_format_resolver(formats), metavar="|".join(formats),
                            help=f"Report format (default {formats[0]}).")(f)

    return decorate


def checkpoint_arg(name: str = "path") -> Callable[[F], F]:
    """A checkpoint path argument (file or directory); existence is checked by the reader."""
    return click.argument(name, type=click.Path(dir_okay=True, path_type=str))


def key_opt(help_text: str = "Dotted path of the state_dict inside a nested checkpoint.") -> Callable[[F], F]:
    """``--key K``: a dotted path into a nested checkpoint."""
    return click.option("--key", "key", default=None, metavar="K", help=help_text)


def model_opts(f: F) -> F:
    """``--model SPEC`` and repeatable ``-a NAME=VALUE`` for building a model."""
    f = click.option("-a", "--arg", "model_args", multiple=True, metavar="NAME=VALUE",
                     help="Keyword argument for the model (value parsed as JSON, else a string).")(f)
    return click.option("--model", "model_spec", metavar="SPEC",
                        help="Model: package.module:attr, path/file.py:attr, or a JSON signature.")(f)


def is_trusted(ctx: click.Context, local: bool = False) -> bool:
    """Whether ``--trust`` was given before or after the command name."""
    return local or bool(_root_obj(ctx).get("trust"))


def warn_trusted(trust: bool) -> None:
    """Say on stderr that full unpickling is on."""
    if trust:
        warn("--trust given: pickled code in the checkpoint may run")
