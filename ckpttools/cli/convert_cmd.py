"""``ckpttools convert``: lossless, streaming, verified conversion."""

from __future__ import annotations

import click

from ckpttools.cli._options import (allow_download, checkpoint_arg, common_options, is_trusted, key_opt,
                                    warn_trusted)
from ckpttools.cli._progress import byte_progress
from ckpttools.formats import fileio


@click.command()
@checkpoint_arg("src")
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--to", "to", type=click.Choice(["pth", "safetensors", "dcp"]),
              help="Output format (default: from DST's extension).")
@key_opt("Convert only the subtree at this dotted path (a state_dict).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Cast floating tensors to this dtype.")
@click.option("--max-shard-size", metavar="SIZE",
              help="Write a sharded safetensors folder with shards of at most SIZE (2GB).")
@click.option("--no-verify", is_flag=True, help="Skip re-reading and comparing the output.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--drop-unrepresentable", is_flag=True,
              help="Leave out values that need pickle (class instances) instead of failing.")
@common_options()
@click.pass_context
def convert(ctx: click.Context, src: str, dst: str, to: str | None, key: str | None,
            dtype: str | None, max_shard_size: str | None, no_verify: bool, force: bool,
            drop_unrepresentable: bool, output_format: str, trust: bool) -> None:
    """Convert SRC to DST losslessly (.pth, safetensors, sharded safetensors, DCP).

    Non-tensor values (epoch, optimizer param_groups, RNG state ...) travel in the
    safetensors metadata; the output is verified bit for bit unless --no-verify.
    Exit 0 done, 1 verification failed (output removed), 2 could not convert.

    \b
    Examples:
      ckpttools convert ckpt.pth ckpt.safetensors
      ckpttools convert ckpt.safetensors ckpt.pth
      ckpttools convert model.pth out/ --to safetensors --max-shard-size 2GB
      ckpttools convert ckpt.pth model.safetensors --key model_state_dict --dtype bf16
    """
    from ckpttools.ops.convert.conversion import convert_checkpoint
    from ckpttools.render.convert import render_convert

    trust = is_trusted(ctx, trust)
    warn_trusted(trust)
    allow_download(src)  # convert reads every byte: a server without Range will do
    with byte_progress(_size(src), "converting") as advance:
        result = convert_checkpoint(src, dst, to=to, key=key, dtype=dtype,
                                    max_shard_size=max_shard_size, verify=not no_verify,
                                    force=force, trust=trust,
                                    drop_unrepresentable=drop_unrepresentable,
                                    on_progress=advance)
    click.echo(render_convert(result, output_format))
    ctx.exit(0 if result.ok else 1)


def _size(path: str) -> int:
    import os

    if fileio.is_url(path):  # the progress bar in bytes for a download too
        return 0 if fileio.isdir(path) else fileio.getsize(path)
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    return os.path.getsize(path) if os.path.exists(path) else 0
