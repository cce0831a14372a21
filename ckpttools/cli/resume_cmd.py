"""``ckpttools verify-resume``: does resuming from a checkpoint reproduce training, and if not, why."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import click

from ckpttools.cli._figures import check_plot, plot_opt, write_file
from ckpttools.cli._options import common_options, is_quiet, is_trusted, warn_trusted


@click.command("verify-resume")
@click.option("--recipe", "recipe", required=True, metavar="SPEC",
              help="Training recipe: path/to/recipe.py or package.module.")
@click.argument("checkpoint", required=False, metavar="[CKPT", type=click.Path(dir_okay=True, path_type=str))
@click.argument("next_checkpoint", required=False, metavar="NEXT]",
                type=click.Path(dir_okay=True, path_type=str))
@click.option("--steps", type=click.IntRange(min=1), metavar="N", help="Run length (run mode).")
@click.option("--resume-at", type=click.IntRange(min=0), metavar="K",
              help="Save after K steps, resume from that file in a fresh process (run mode).")
@click.option("--via", type=click.Choice(["safetensors"]),
              help="Send the run mode's checkpoint through the converter on the way.")
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Tolerance for the first resumed step (0: bitwise).")
@click.option("--drift-atol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Tolerance for the steps after the first.")
@click.option("--in-process", is_flag=True,
              help="Resume in this process instead of a fresh one (misses state kept outside the checkpoint).")
@plot_opt
@common_options()
@click.pass_context
def verify_resume(ctx: click.Context, recipe: str, checkpoint: str | None, next_checkpoint: str | None,
                  steps: int | None, resume_at: int | None, via: str | None, atol: float, drift_atol: float,
                  in_process: bool, plot: str | None, trust: bool, output_format: str) -> None:
    """Check that resuming from a checkpoint reproduces the uninterrupted run.

    Two modes: CKPT NEXT loads CKPT into fresh objects, trains to NEXT's step and compares
    with NEXT; --steps N --resume-at K trains N steps uninterrupted, saves after K, resumes
    from that file in a fresh process and compares step by step. When the runs differ, each
    piece of state (optimizer, scheduler, scaler, RNG) is reset or restored in turn to name
    the one that matters. Exit 0 identical or within tolerance, 1 diverged, 2 unusable
    recipe or checkpoint.

    A recipe that defines build_trainer(output_dir) (a transformers.Trainer, or a Lightning
    Trainer with build_module() and build_datamodule()) is resumed from CKPT through the
    framework's own path in a fresh process; the checkpoint it writes under NEXT's name is
    compared with NEXT piece by piece. With --steps N --resume-at K, the trainer first runs
    N steps saving at K and N, then resumes from K and saves at N (--via and --in-process do
    not apply).

    \b
    The recipe (path/to/recipe.py, or package.module importable from here) defines:
      build_model()                      the nn.Module                      required
      build_optimizer(model)             the optimizer                      required
      batch(i)                           the batch of step i, from 0        required
      loss(model, batch)                 the loss; the default step is zero_grad, loss,
                                         backward, optimizer.step, scheduler.step
      train_step(model, optimizer, scheduler, batch)
                                         a whole step returning the loss, instead of
                                         loss() (AMP, clipping, accumulation)
      build_scheduler(optimizer)         an LR scheduler                    optional
      build_scaler()                     a torch.amp.GradScaler             optional
      save_checkpoint(path, state)       your file layout                   optional
      load_checkpoint(path) -> state     your file layout                   optional
    state is a dict: step, model_state_dict, optimizer_state_dict, scheduler_state_dict,
    scaler_state_dict, rng_state {torch, numpy, python}, loss. A checkpoint with step = n
    has run batches 0..n-1; the resume runs batch(n) next.

    \b
    Examples:
      ckpttools verify-resume --recipe examples/tutorial_mlp.py --steps 40 --resume-at 24
      ckpttools verify-resume --recipe examples/tutorial_linear.py ckpt_epoch3.pt ckpt_epoch4.pt
      ckpttools verify-resume --recipe examples/hf_trainer_recipe.py out/checkpoint-2 out/checkpoint-4
      ckpttools verify-resume --recipe examples/lightning_recipe.py --steps 6 --resume-at 4
      ckpttools verify-resume --recipe mypkg.recipe ckpt_3.pt ckpt_4.pt --format json
      ckpttools verify-resume --recipe examples/tutorial_mlp.py --steps 40 --resume-at 24 --plot resume.svg
    """
    from ckpttools.ops.resume.fresh import prefork

    _check_mode(checkpoint, next_checkpoint, steps, resume_at, via)
    plot_fmt = check_plot(plot, torch_first=True)
    trusted = is_trusted(ctx, trust)
    warn_trusted(trusted)
    if _is_trainer(recipe, checkpoint):
        _check_trainer_options(via, in_process)
        if plot is not None:
            raise click.UsageError("--plot works with the recipe functions, not a build_trainer recipe")
        ctx.exit(_trainer_mode(recipe, checkpoint, next_checkpoint, steps, resume_at, atol,
                               drift_atol, output_format))
    # Before the recipe or any torch op runs here: the fresh process is this one, forked.
    worker = prefork() if steps is not None and not in_process else None

    from ckpttools.ops.convert.conversion import convert_checkpoint
    from ckpttools.ops.resume.verify import verify_resume as run
    from ckpttools.render.resume import render_resume

    with worker or contextlib.nullcontext():  # closed here too when the run fails before using it
        result = run(recipe, checkpoint, next_checkpoint, steps=steps, resume_at=resume_at, atol=atol,
                     drift_atol=drift_atol, via=via, converter=convert_checkpoint if via else None,
                     trust=trusted, fresh_process=not in_process,
                     on_progress=_progress(), worker=worker, drift=plot is not None)
    click.echo(render_resume(result, output_format))
    if plot is not None and plot_fmt is not None:
        from ckpttools.render.plots.resume import plot_resume

        write_file(plot, plot_resume(result, plot_fmt), "the resume figure")
    ctx.exit(0 if result.ok else 1)


def _is_trainer(recipe: str, checkpoint: str | None) -> bool:
    """A ``build_trainer`` recipe? The run mode reads the recipe's source without importing
    it, so that its fresh process can still be forked before torch loads."""
    if checkpoint is None:
        from ckpttools.ops.resume.trainer_run import declares_build_trainer

        return declares_build_trainer(recipe)
    from ckpttools.ops.resume.trainers import is_trainer_recipe

    return is_trainer_recipe(recipe)


def _check_trainer_options(via: str | None, in_process: bool) -> None:
    """Options of the loop recipes that have no meaning when the framework resumes itself."""
    if via is not None:
        raise click.BadParameter("a build_trainer recipe resumes from the files the framework "
                                 "writes; drop --via, or convert CKPT yourself and give CKPT "
                                 "NEXT", param_hint="--via")
    if in_process:
        raise click.BadParameter("a build_trainer recipe always resumes in a fresh process "
                                 "(the framework's own resume path); drop --in-process",
                                 param_hint="--in-process")


def _trainer_mode(recipe: str, checkpoint: str | None, next_checkpoint: str | None,
                  steps: int | None, resume_at: int | None, atol: float, drift_atol: float,
                  output_format: str) -> int:
    """A ``build_trainer`` recipe: resume through the framework's own path (HF, Lightning)."""
    from ckpttools.render.resume_trainer import render_trainer_resume

    if checkpoint is not None and next_checkpoint is not None:
        from ckpttools.ops.resume.trainers import verify_trainer_resume

        result = verify_trainer_resume(recipe, checkpoint, next_checkpoint, atol=atol,
                                       drift_atol=drift_atol)
    else:
        from ckpttools.ops.resume.trainer_run import verify_trainer_run

        result = verify_trainer_run(recipe, steps or 0, resume_at or 0, atol=atol,  # both given
                                    drift_atol=drift_atol)
    click.echo(render_trainer_resume(result, output_format))
    return 0 if result.ok else 1


def _check_mode(checkpoint: str | None, next_checkpoint: str | None, steps: int | None,
                resume_at: int | None, via: str | None) -> None:
    run_mode = steps is not None or resume_at is not None
    if checkpoint is not None and run_mode:
        raise click.UsageError("give either CKPT NEXT or --steps/--resume-at, not both")
    if checkpoint is not None and next_checkpoint is None:
        raise click.UsageError("missing NEXT: give the checkpoint the run saved after CKPT")
    if checkpoint is None and (steps is None or resume_at is None):
        raise click.UsageError("give CKPT NEXT, or --steps N and --resume-at K")
    if via is not None and not run_mode:
        raise click.UsageError("--via works with --steps/--resume-at only")
    if steps is not None and resume_at is not None and resume_at >= steps:
        raise click.BadParameter(f"{resume_at} is not below --steps {steps}", param_hint="--resume-at")


def _progress() -> Callable[[str], None] | None:
    """Phase lines on stderr, only when a person is watching it."""
    if not sys.stderr.isatty() or is_quiet():
        return None
    return lambda line: click.echo(f"verify-resume: {line}", err=True)
