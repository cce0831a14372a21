"""``ckpttools diff``: a checkpoint against a model, or against another checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from ckpttools.cli._figures import check_plot, plot_opt, write_file
from ckpttools.cli._options import (
    allow_download,
    common_options,
    checkpoint_arg,
    is_trusted,
    key_opt,
    model_opts,
    note,
    warn,
    warn_trusted,
)

if TYPE_CHECKING:
    from ckpttools.ops.model_diff import DiffResult


@click.command()
@checkpoint_arg("path")
@click.argument("other", required=False, type=click.Path(path_type=str))
@model_opts
@key_opt()
@click.option("--suggest-rules", "rules_out", metavar="FILE", type=click.Path(path_type=str),
              help="Write inferred REGEX=REPLACEMENT rename rules for 'remap --rules'.")
@click.option("--atol", type=float, default=0.0, show_default=True,
              help="Absolute tolerance for values (PATH OTHER).")
@click.option("--rtol", type=float, default=0.0, show_default=True,
              help="Relative tolerance for values (PATH OTHER).")
@click.option("--allow-tied", is_flag=True,
              help="Accept tied aliases the checkpoint leaves out (from_pretrained re-ties them).")
@plot_opt
@common_options()
@click.pass_context
def diff(ctx: click.Context, path: str, other: str | None, model_spec: str | None,
         model_args: tuple[str, ...], key: str | None, rules_out: str | None, atol: float,
         rtol: float, allow_tied: bool, plot: str | None, output_format: str, trust: bool) -> None:
    """Will PATH load into a model? Or: how does PATH differ from OTHER?

    With --model, compare the checkpoint's state_dict with what the model's load_state_dict
    expects (the model is built on the meta device; no weights are read), name systematic
    differences (a 'module.' prefix, a nested state_dict, renamed layers) and print one fix
    plan, checked against the model before it is shown, as Python and as a remap command.
    --model also takes a JSON signature (ckpttools inspect REF --format json > ref.json).
    With OTHER, compare two checkpoints of any formats key by key and value by value.
    Exit 0 when load_state_dict(strict=True) would succeed on the state_dict as found / they
    match, 1 when not (absent tied aliases too, unless --allow-tied), 2 when the diff could
    not run.

    \b
    Examples:
      ckpttools diff model.pth --model mypkg.models:Net -a num_classes=10
      ckpttools diff last.ckpt --model train.py:build_model --suggest-rules rules.txt
      ckpttools diff model.pth --model ref.json --format json
      ckpttools diff model.pth model.safetensors --atol 1e-6
      ckpttools diff base.safetensors tuned.safetensors --plot changes.png
    """
    if (other is None) == (model_spec is None):
        raise click.UsageError("give either OTHER or --model SPEC")
    trust = is_trusted(ctx, trust)
    warn_trusted(trust)
    if model_spec is not None and plot is not None:
        raise click.UsageError("--plot goes with OTHER (diff A B)")
    plot_fmt = check_plot(plot, warm=False)
    if model_spec is not None:
        ok = _diff_model(path, model_spec, model_args, key, rules_out, output_format, trust,
                         allow_tied)
    elif model_args or rules_out or key or allow_tied:
        raise click.UsageError("-a, --key, --allow-tied and --suggest-rules go with --model")
    else:
        ok = _diff_pair(path, str(other), atol, rtol, output_format, trust, plot, plot_fmt)
    ctx.exit(0 if ok else 1)


def _diff_model(path: str, spec: str, args: tuple[str, ...], key: str | None,
                rules_out: str | None, fmt: str, trust: bool, allow_tied: bool) -> bool:
    from ckpttools.formats.registry import open_checkpoint
    from ckpttools.ops.model_spec import load_model, parse_model_args
    from ckpttools.ops.model_diff import diff_against_model
    from ckpttools.render.diff import render_diff

    model = load_model(spec, parse_model_args(args))
    with open_checkpoint(path, trust=trust) as reader:
        result = diff_against_model(reader, model, key=key, model_name=spec,
                                    allow_tied=allow_tied)
    click.echo(render_diff(result, fmt))
    for message in result.warnings:
        warn(message)
    if rules_out:
        _write_rules(result, rules_out)
    return result.ok


def _write_rules(result: DiffResult, dest: str) -> None:
    from ckpttools.formats.writers.atomic import atomic_output
    from ckpttools.ops.keymatch import format_rules
    from ckpttools.units import plural

    plan = result.plan
    rules = plan.rules if plan else ()
    if not plan or not rules:
        warn(f"no rename rules to suggest; {dest} not written")
        return
    drops = " ".join(f"--drop '{p}'" for s in plan.steps if s.kind == "drop" for p in s.args)
    key = f" --key {plan.source.key}" if plan.source.key else ""
    text = format_rules(rules, f"ckpttools remap {plan.source.file} OUT{key} --rules {dest} "
                               f"{drops}\nafter: {plan.after.text}")
    with atomic_output(dest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    note(f"wrote {plural(len(rules), 'rule')} to {dest}")


def _diff_pair(path: str, other: str, atol: float, rtol: float, fmt: str, trust: bool,
               plot: str | None = None, plot_fmt: str | None = None) -> bool:
    from ckpttools.cli._progress import byte_progress
    from ckpttools.formats.registry import open_checkpoint
    from ckpttools.ops.diff.pair import diff_checkpoints
    from ckpttools.render.diff import render_checkpoint_diff

    allow_download(path, other)  # every value of both is compared anyway
    with open_checkpoint(path, trust=trust) as a, open_checkpoint(other, trust=trust) as b:
        total = 2 * sum(e.nbytes for e in a.tensor_entries())
        with byte_progress(total, "comparing") as advance:
            step = _warm_after_first_chunk(advance) if plot_fmt else advance
            result = diff_checkpoints(a, b, atol=atol, rtol=rtol, on_progress=step)
    click.echo(render_checkpoint_diff(result, fmt))
    if plot is not None and plot_fmt is not None:
        from ckpttools.render.plots.diff import plot_diff

        write_file(plot, plot_diff(result, plot_fmt), "the layer-change chart")
    return result.ok


def _warm_after_first_chunk(advance: Callable[[int], None]) -> Callable[[int], None]:
    """``advance``, which also starts matplotlib's import (``warm_up``) once the first chunk pair
    has been compared: the comparison's memory peaks there (its buffers, torch's first kernels),
    so the import's 30 MB come on top of its steady state, not of its peak. Progress is reported
    before each chunk pair is compared: the second report is the first chunk pair done."""
    calls = 0

    def step(n: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            from ckpttools.render.plots import warm_up

            warm_up()
        advance(n)

    return step
