"""``ckpttools inspect`` (being written)."""

from __future__ import annotations

import click


@click.command()
@click.argument("path")
def inspect(path: str) -> None:
    """Show what a checkpoint holds."""
    raise click.ClickException("inspect is being written")
