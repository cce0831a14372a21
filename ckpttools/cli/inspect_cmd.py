"""``ckpttools inspect``: what a checkpoint is and what it holds."""

from __future__ import annotations

import click

from ckpttools.cli._options import (checkpoint_arg, common_options, is_trusted, key_opt,
                                    warn, warn_trusted)
from ckpttools.cli._progress import byte_progress


@click.command()
@checkpoint_arg()
@key_opt("Dotted path into the checkpoint; show only that subtree.")
@click.option("--filter", "pattern", metavar="GLOB", help="Show only keys matching GLOB (*.weight).")
@click.option("--tree", is_flag=True, help="Group tensors by module with parameter counts.")
@click.option("--expand", is_flag=True, help="List repeated layers one by one.")
@click.option("--stats", "with_stats", is_flag=True,
              help="Min/max/mean/std and NaN/Inf counts per tensor (reads tensor data).")
@common_options()
@click.pass_context
def inspect(ctx: click.Context, path: str, key: str | None, pattern: str | None, tree: bool,
            expand: bool, with_stats: bool, output_format: str, trust: bool) -> None:
    """Show what a checkpoint is and what it holds, without running its pickle.

    PATH is a file or folder of any supported format (found from the bytes).
    Exit 0 clean, 1 unsafe content found, 2 unreadable.

    \b
    Examples:
      ckpttools inspect model.pth
      ckpttools inspect ckpt.pth --key model_state_dict --tree
      ckpttools inspect model.safetensors --filter '*.weight' --stats --format json
    """
    from ckpttools.formats.registry import open_checkpoint
    from ckpttools.ops.inspect import inspect_checkpoint
    from ckpttools.render.inspect import render_inspect

    trust = is_trusted(ctx, trust)
    warn_trusted(trust)
    with open_checkpoint(path, trust=trust) as reader:
        total = sum(t.nbytes for t in reader.tensor_entries()) if with_stats else 0
        with byte_progress(total, "reading tensors") as advance:
            result = inspect_checkpoint(reader, key=key, pattern=pattern, with_stats=with_stats,
                                        on_progress=advance)
    click.echo(render_inspect(result, output_format, tree=tree, expand=expand))
    for g in result.unsafe_globals:
        warn(f"{path}: unsafe global {g.qualname} in {g.pickle or 'the pickle'}")
    ctx.exit(0 if result.ok else 1)
