"""``ckpttools remap``: rename, strip, add and drop state_dict keys into a new checkpoint."""

from __future__ import annotations

import click

from ckpttools.cli._options import (
    common_options,
    checkpoint_arg,
    is_trusted,
    key_opt,
    warn,
    warn_trusted,
)


@click.command()
@checkpoint_arg("src")
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--strip-prefix", metavar="P", help="Remove P from the start of keys that have it.")
@click.option("--add-prefix", metavar="P", help="Put P in front of every key.")
@click.option("--rename", "renames", multiple=True, metavar="REGEX=REPL",
              help="re.sub rule, repeatable, applied in order (after the prefixes).")
@click.option("--rules", "rules_file", metavar="FILE", type=click.Path(path_type=str),
              help="REGEX=REPL rules, one a line (diff --suggest-rules writes them).")
@click.option("--drop", "drops", multiple=True, metavar="REGEX",
              help="Leave out keys the pattern matches anywhere (re.search), repeatable.")
@key_opt("Dotted path of the state_dict in a nested checkpoint; DST holds it alone.")
@click.option("--keep-wrapper", is_flag=True,
              help="A torch DST keeps the rest of the nested checkpoint around the state_dict.")
@click.option("--dry-run", is_flag=True, help="Print the old -> new table; write nothing.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@common_options()
@click.pass_context
def remap(ctx: click.Context, src: str, dst: str, strip_prefix: str | None,
          add_prefix: str | None, renames: tuple[str, ...], rules_file: str | None,
          drops: tuple[str, ...], key: str | None, keep_wrapper: bool, dry_run: bool,
          force: bool, output_format: str, trust: bool) -> None:
    """Write SRC's state_dict to DST with keys renamed or dropped.

    Order: --drop (on the old names), --strip-prefix, --add-prefix, --rename rules, --rules.
    From a nested checkpoint DST holds the state_dict alone (what
    model.load_state_dict(torch.load(DST, weights_only=True)) needs), and says so on stderr; --keep-wrapper keeps
    the rest (optimizer, epoch ...) around it in a torch DST. Written atomically, never over
    SRC; two keys renamed to one name is an error. Exit 0 done, 2 could not.

    \b
    Examples:
      ckpttools remap ddp.pth model.pth --strip-prefix module.
      ckpttools remap last.ckpt weights.safetensors --key state_dict --strip-prefix model.
      ckpttools remap last.ckpt fixed.ckpt --key state_dict --strip-prefix model. --keep-wrapper
      ckpttools remap old.pth new.pth --rules rules.txt --drop '^head\\.' --dry-run
    """
    from ckpttools.cli._progress import byte_progress
    from ckpttools.ops.diff.remap import build_rules, remap_checkpoint
    from ckpttools.render.remap import render_remap

    trust = is_trusted(ctx, trust)
    warn_trusted(trust)
    rules = build_rules(strip_prefix=strip_prefix, add_prefix=add_prefix, renames=renames,
                        rules_file=rules_file)
    with byte_progress(_size(src), "writing") as advance:
        result = remap_checkpoint(src, dst, rules=rules, drops=drops, key=key, dry_run=dry_run,
                                  force=force, trust=trust, keep_wrapper=keep_wrapper,
                                  on_progress=advance)
    for message in result.notes:
        warn(message)
    click.echo(render_remap(result, output_format))
    ctx.exit(0)


def _size(path: str) -> int:
    import os

    return os.path.getsize(path) if os.path.isfile(path) else 0
