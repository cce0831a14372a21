"""A byte progress bar on stderr, shown only on a terminal and only for work that takes a while."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

# Work expected to finish sooner than this shows no bar.
DELAY_SECONDS = 0.5


@contextmanager
def byte_progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(nbytes)`` callback; draws a bar once the job has run ``DELAY_SECONDS``."""
    from ckpttools.cli._options import is_quiet

    if not sys.stderr.isatty() or total <= 0 or is_quiet():
        yield lambda n: None
        return
    start = time.monotonic()
    done = 0
    bar: click._termui_impl.ProgressBar[int] | None = None  # type: ignore[name-defined]

    def advance(n: int) -> None:
        nonlocal bar, done
        done += n
        if bar is None and time.monotonic() - start > DELAY_SECONDS:
            bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                    show_eta=True, show_percent=True)
            bar.__enter__()
            bar.update(done)
        elif bar is not None:
            bar.update(n)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
