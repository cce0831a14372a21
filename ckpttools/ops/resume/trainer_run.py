"""``verify-resume --steps N --resume-at K`` with a ``build_trainer`` recipe (HF Trainer, Lightning).

The run writes its own checkpoints: in a fresh process, the recipe's trainer trains from scratch
to step N and the framework saves at steps K and N through its own checkpoint path (Trainer's
``checkpoint-K`` folders; Lightning's ``trainer.save_checkpoint``). A second fresh process builds
the trainer again on an empty folder, resumes from step K's checkpoint through the framework's
own resume path and saves at N; that checkpoint is compared with the uninterrupted run's, piece by
piece (as with CKPT NEXT). N overrides the recipe's own run length (``max_steps``; Lightning's
``max_epochs`` is lifted) in both runs alike.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from ckpttools.errors import InvalidArgumentError, SpecError
from ckpttools.ops.resume.trainers import (TrainerResumeResult, judged_comparison, lacks,
                                           trainer_layout)


def declares_build_trainer(spec: str) -> bool:
    """Whether the recipe's source defines ``build_trainer`` at module level, read without
    importing it (so the run mode can still fork its fresh process before torch loads)."""
    path: str | None = spec
    if not spec.endswith(".py"):
        try:
            found = importlib.util.find_spec(spec)
        except (ImportError, ValueError):
            return False
        path = found.origin if found is not None else None
    if path is None or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (SyntaxError, UnicodeDecodeError, OSError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "build_trainer":
            return True
        names = [a.asname or a.name for a in node.names] if isinstance(node, ast.ImportFrom) else \
            [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if "build_trainer" in names:
            return True
    return False


def _job(tmp: str, name: str, recipe: str, steps: int, save_at: list[int],
         resume_from: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """One fresh-process run; ``(report, None)`` on success, else ``(None, whole error)``."""
    job = {"recipe": recipe, "steps": steps, "save_at": save_at, "resume_from": resume_from,
           "output_dir": os.path.join(tmp, name), "error": os.path.join(tmp, f"{name}.error"),
           "result": os.path.join(tmp, f"{name}.json")}
    path = os.path.join(tmp, f"{name}.job.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(job, f)
    proc = subprocess.run([sys.executable, "-m", "ckpttools.ops.resume.trainer_worker", "--run",
                           path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode == 0:
        with open(job["result"], encoding="utf-8") as f:
            return json.load(f), None
    if os.path.exists(job["error"]):
        with open(job["error"], encoding="utf-8") as f:
            return None, " ".join(f.read().split())  # the whole message, on one line
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])
    return None, f"the run's process exited {proc.returncode}: {tail}"


def _written(report: dict[str, Any], step: int, recipe: str) -> str:
    path = report["checkpoints"].get(str(step))
    if path is None or not os.path.exists(path):
        raise SpecError(f"{recipe}: the run wrote no checkpoint at step {step} (expected "
                        f"{path}); does training reach step {step}?")
    return str(path)


def verify_trainer_run(recipe: str, steps: int, resume_at: int, *, atol: float = 0.0,
                       drift_atol: float = 0.0, workdir: str | None = None) -> TrainerResumeResult:
    """Train ``steps`` steps uninterrupted, resume from the framework's checkpoint at
    ``resume_at`` through its own resume path, and compare the two checkpoints at ``steps``.

    Args:
        recipe: ``path/recipe.py`` or ``package.module`` defining ``build_trainer(output_dir)``.
        steps: the run length N (overrides the recipe's ``max_steps`` / epochs in both runs).
        resume_at: K, with ``1 <= K < N``: the step whose checkpoint is resumed.
        atol: tolerance for the first resumed step (0: bitwise).
        drift_atol: tolerance for later steps and the state at N when ``N > K + 1``.
        workdir: where the runs write (a temporary folder, removed after).

    Returns:
        The result; ``ok`` is False when the resumed run diverged or could not resume.

    Raises:
        InvalidArgumentError: ``resume_at`` is 0 (a trainer saves nothing before its first step).
        SpecError: the recipe fails (the whole message is shown) or writes no checkpoint.
    """
    if resume_at < 1:
        raise InvalidArgumentError("--resume-at 0: a trainer writes no checkpoint before its "
                                   "first step; give --resume-at 1 or later")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="ckpttools-resume-") as tmp:
        ref, failure = _job(tmp, "reference", recipe, steps, [resume_at, steps], None)
        if ref is None:
            raise SpecError(f"{recipe}: the uninterrupted run failed: {failure}")
        ckpt, expected = _written(ref, resume_at, recipe), _written(ref, steps, recipe)
        start = trainer_layout(ckpt, f"the checkpoint at step {resume_at}")
        base = TrainerResumeResult(ref["framework"], recipe, f"step {resume_at} of the run",
                                   f"step {steps} of the run", start.step, steps, atol,
                                   "cannot_resume", "", missing=start.missing,
                                   drift_atol=drift_atol, run_steps=steps)
        resumed, failure = _job(tmp, "resumed", recipe, steps, [steps], ckpt)
        if resumed is None and not start.missing:
            raise SpecError(f"{recipe}: resuming from step {resume_at} failed: {failure}")
        if resumed is None:
            return _cannot(base, f"{lacks(base.framework, start.missing)}; {base.framework} "
                                 f"could not resume from step {resume_at}: {failure}")
        result = judged_comparison(base, expected, _written(resumed, steps, recipe))
    if not result.ok and resume_at in ref.get("inside_epoch", ()):
        return _cannot(result, f"{result.verdict}; step {resume_at} is inside an epoch, where "
                               "Lightning restarts the epoch's data unless the dataloader is "
                               "stateful: resume at an epoch's last step")
    return result


def _cannot(base: TrainerResumeResult, verdict: str) -> TrainerResumeResult:
    from dataclasses import replace

    return replace(base, verdict=verdict)
