"""The fresh process of a trainer resume: build the recipe's trainer on an empty folder and resume
from CKPT through the framework's own path, or run it for ``--steps`` saving at given steps.

``python -m ckpttools.ops.resume.trainer_worker RECIPE FRAMEWORK CKPT OUTPUT_DIR ERROR_FILE``
resumes from CKPT as the recipe's trainer is configured.
``python -m ckpttools.ops.resume.trainer_worker --run JOB.json`` trains to ``steps`` (from
scratch, or resumed from ``resume_from``), the framework saving at each of ``save_at`` through
its own checkpoint path, and writes ``{"framework", "checkpoints": {step: path},
"inside_epoch": [step...]}`` to ``result``. On failure the whole error message (every line) goes to the error file, exit 3.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

HF_TRAINER, LIGHTNING = "hf-trainer", "lightning"


def resume(recipe: str, framework: str, checkpoint: str, output_dir: str) -> None:
    """Build the trainer and resume; what the framework writes lands in ``output_dir``."""
    from ckpttools.ops.resume.recipe import _import

    module = _import(recipe)
    trainer = module.build_trainer(output_dir)
    if framework == HF_TRAINER:
        trainer.train(resume_from_checkpoint=checkpoint)
        return
    datamodule = module.build_datamodule() if hasattr(module, "build_datamodule") else None
    trainer.fit(module.build_module(), datamodule=datamodule, ckpt_path=checkpoint)


def framework_of(trainer: Any) -> str:
    """``hf-trainer`` or ``lightning``, from the class ``build_trainer`` returned.

    Raises:
        TypeError: neither.
    """
    names = [f"{c.__module__}.{c.__name__}" for c in type(trainer).__mro__]
    if "transformers.trainer.Trainer" in names:
        return HF_TRAINER
    if any(n.startswith(("lightning.", "pytorch_lightning.")) and n.endswith(".Trainer")
           for n in names):
        return LIGHTNING
    raise TypeError(f"build_trainer returned a {names[0]}, not a transformers.Trainer or a "
                    "Lightning Trainer")


def _run_hf(trainer: Any, steps: int, save_at: set[int], resume_from: str | None) -> dict[int, str]:
    """Train to ``steps``; Trainer saves ``checkpoint-K`` itself at each step of ``save_at``."""
    from transformers import TrainerCallback

    class SaveAt(TrainerCallback):  # asks Trainer's own save, as save_steps would
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in save_at:
                control.should_save = True

    trainer.args.max_steps = steps
    trainer.args.save_total_limit = None  # the recipe's rotation must not delete checkpoint-K
    trainer.add_callback(SaveAt())
    trainer.train(resume_from_checkpoint=resume_from)
    return {k: os.path.join(trainer.args.output_dir, f"checkpoint-{k}") for k in save_at}


def _run_lightning(trainer: Any, module: Any, steps: int, save_at: set[int],
                   resume_from: str | None, output_dir: str) -> tuple[dict[int, str], list[int]]:
    """Fit to ``steps`` with ``trainer.save_checkpoint`` at each step of ``save_at``, from the
    hooks ``ModelCheckpoint`` saves from: ``on_train_batch_end`` inside an epoch
    (``every_n_train_steps``); at an epoch's last batch ``on_validation_end`` (its default with
    a validation loop), else ``on_train_epoch_end``: where Lightning resumes exactly. Also
    returns the steps saved inside an epoch."""
    from lightning.pytorch.callbacks import Callback

    paths = {k: os.path.join(output_dir, f"ckpttools-step{k}.ckpt") for k in save_at}
    inside: list[int] = []

    class SaveAt(Callback):
        pending: int | None = None  # a step at an epoch's last batch: saved after validation

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            step = trainer.global_step
            if step not in paths:
                return
            if batch_idx + 1 >= trainer.num_training_batches and step < steps:
                self.pending = step
                return
            if batch_idx + 1 < trainer.num_training_batches:
                inside.append(step)
            trainer.save_checkpoint(paths.pop(step))

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            self._save_pending(trainer)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._save_pending(trainer)  # no validation this epoch

        def _save_pending(self, trainer: Any) -> None:
            if self.pending is not None and not trainer.sanity_checking:
                trainer.save_checkpoint(paths.pop(self.pending))
                self.pending = None

    wanted = dict(paths)
    trainer.fit_loop.epoch_loop.max_steps = steps
    trainer.fit_loop.max_epochs = -1  # --steps decides the length, not the recipe's epochs
    trainer.callbacks.append(SaveAt())
    datamodule = module.build_datamodule() if hasattr(module, "build_datamodule") else None
    trainer.fit(module.build_module(), datamodule=datamodule, ckpt_path=resume_from)
    return wanted, inside


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (see the module docstring); returns the framework and the checkpoints."""
    from ckpttools.ops.resume.recipe import _import

    module = _import(job["recipe"])
    trainer = module.build_trainer(job["output_dir"])
    framework = framework_of(trainer)
    save_at = set(job["save_at"])
    inside: list[int] = []
    if framework == HF_TRAINER:
        found = _run_hf(trainer, job["steps"], save_at, job.get("resume_from"))
    else:
        found, inside = _run_lightning(trainer, module, job["steps"], save_at,
                                       job.get("resume_from"), job["output_dir"])
    return {"framework": framework, "checkpoints": {str(k): v for k, v in found.items()},
            "inside_epoch": inside}


def main(argv: list[str]) -> int:
    job: dict[str, Any] | None = None
    if argv[:1] == ["--run"]:
        with open(argv[1], encoding="utf-8") as f:
            job = json.load(f)
        error_file = job["error"]
    else:
        error_file = argv[4]
    try:
        if job is not None:
            report = run(job)
            with open(job["result"], "w", encoding="utf-8") as f:
                json.dump(report, f)
        else:
            resume(*argv[:4])
    except BaseException as e:  # noqa: BLE001 - any failure of the recipe is reported whole
        traceback.print_exc()
        with open(error_file, "w", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}: {e}")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
