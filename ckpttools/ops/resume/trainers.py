"""``verify-resume`` through a framework's own resume path (HF Trainer, Lightning).

A trainer recipe defines ``build_trainer(output_dir)`` returning a ``transformers.Trainer``, or
``build_trainer(output_dir)`` + ``build_module()`` (+ ``build_datamodule()``) for Lightning. In a
fresh process, ckpttools builds the trainer on an empty folder and resumes from CKPT with
``trainer.train(resume_from_checkpoint=CKPT)`` or ``trainer.fit(..., ckpt_path=CKPT)``; the
checkpoint that run writes under NEXT's name is compared with NEXT, tensor by tensor (bitwise by
default), and every difference is put on the piece that holds it (model, optimizer, scheduler,
RNG, data-loader state). Pieces CKPT lacks are named first, since they explain a divergence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

from ckpttools.errors import SpecError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.formats.trainer import (EXPECTED, HF_TRAINER, LIGHTNING, TrainerLayout, describe_trainer,
                                         unsaved_rng)
from ckpttools.ops.resume.compare import LossRow, TensorDiff, compare_leaf

Status = Literal["identical", "within_tolerance", "diverged", "cannot_resume"]
# pieces whose values name paths and settings of the run, not its state
NOT_COMPARED = ("callbacks", "config", "training_args", "custom")


@dataclass(frozen=True)
class PieceResult:
    """One piece of NEXT against the resumed run's: how many leaves differ, and the first."""

    name: str
    kind: str
    leaves: int
    differing: int
    first: str = ""

    @property
    def ok(self) -> bool:
        return self.differing == 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "leaves": self.leaves,
                "differing": self.differing, "first": self.first}


@dataclass(frozen=True)
class TrainerResumeResult:
    """What ``verify-resume`` found with a trainer recipe.

    Attributes:
        framework: ``hf-trainer`` or ``lightning``.
        recipe, checkpoint, next_checkpoint: as given.
        resume_step, end_step: the steps of CKPT and NEXT.
        status: identical, within_tolerance, diverged, or cannot_resume (the framework refused).
        verdict: one line for the user.
        pieces: per piece of NEXT, what differs.
        missing: pieces a resume needs that CKPT lacks.
        diffs: the leaves that differ (at most 200).
        losses: per-step logged losses after CKPT, NEXT against the resumed run (HF Trainer).
        skipped: pieces not compared (paths and settings, not state).
        drift_atol: tolerance after the first resumed step (NEXT's state when it is later).
        run_steps: ``--steps`` in the run mode, where the run wrote CKPT and NEXT itself.
    """

    framework: str
    recipe: str
    checkpoint: str
    next_checkpoint: str
    resume_step: int | None
    end_step: int | None
    atol: float
    status: Status
    verdict: str
    pieces: tuple[PieceResult, ...] = ()
    missing: tuple[str, ...] = ()
    diffs: tuple[TensorDiff, ...] = ()
    losses: tuple[LossRow, ...] = ()
    skipped: tuple[str, ...] = ()
    drift_atol: float = 0.0
    run_steps: int | None = None  # --steps of the run mode (checkpoints written by the run)

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "within_tolerance")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "trainer-run" if self.run_steps else "trainer",
                "framework": self.framework, "recipe": self.recipe,
                "checkpoint": self.checkpoint, "next_checkpoint": self.next_checkpoint,
                "resume_step": self.resume_step, "end_step": self.end_step, "atol": self.atol,
                "drift_atol": self.drift_atol,
                "ok": self.ok, "status": self.status, "verdict": self.verdict,
                "pieces": [p.to_dict() for p in self.pieces], "missing": list(self.missing),
                "diffs": [d.to_dict() for d in self.diffs],
                "losses": [r.to_dict() for r in self.losses], "skipped": list(self.skipped)}


def is_trainer_recipe(spec: str) -> bool:
    """Whether the recipe defines ``build_trainer`` (imports it, as ``verify-resume`` would)."""
    from ckpttools.ops.resume.recipe import _import

    return callable(getattr(_import(spec), "build_trainer", None))


def trainer_layout(path: str, what: str) -> TrainerLayout:
    with open_checkpoint(path) as reader:
        layout = describe_trainer(reader)
    if layout is None or layout.framework not in (HF_TRAINER, LIGHTNING):
        raise SpecError(f"{path}: {what} is not an HF Trainer checkpoint-N folder or a Lightning "
                        ".ckpt; a build_trainer recipe resumes those")
    return layout


def verify_trainer_resume(recipe: str, checkpoint: str, next_checkpoint: str, *,
                          atol: float = 0.0, drift_atol: float = 0.0,
                          workdir: str | None = None) -> TrainerResumeResult:
    """Resume from CKPT through the framework's own path and compare with NEXT.

    Args:
        recipe: ``path/recipe.py`` or ``package.module`` defining ``build_trainer(output_dir)``.
        checkpoint: CKPT, an HF ``checkpoint-K`` folder or a Lightning ``.ckpt``.
        next_checkpoint: NEXT, a later checkpoint of the same run.
        atol: tolerance per tensor (0: bitwise) for the first resumed step.
        drift_atol: tolerance for later steps (NEXT's state when it is more than one step on).
        workdir: where the resumed run writes (a temporary folder, removed after).

    Returns:
        The result; ``ok`` is False when the resumed run diverged or could not resume.

    Raises:
        SpecError: the recipe fails (the whole message is shown), or the checkpoints are not
            a trainer's.
    """
    start, end = trainer_layout(checkpoint, "CKPT"), trainer_layout(next_checkpoint, "NEXT")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="ckpttools-resume-") as tmp:
        out = os.path.join(tmp, "run")
        failure = _run_worker(recipe, start.framework, checkpoint, out, tmp)
        base = TrainerResumeResult(start.framework, recipe, checkpoint, next_checkpoint,
                                   start.step, end.step, atol, "cannot_resume", "",
                                   missing=start.missing, drift_atol=drift_atol)
        if failure is not None:
            if not start.missing:
                raise SpecError(f"{recipe}: resuming from {checkpoint} failed: {failure}")
            return _replace(base, verdict=f"{lacks(start.framework, start.missing)}; "
                                          f"{start.framework} could not resume from it: {failure}")
        resumed = os.path.join(out, os.path.basename(os.path.normpath(next_checkpoint)))
        if not os.path.exists(resumed):
            raise SpecError(f"{recipe}: the resumed run wrote no {os.path.basename(resumed)} in "
                            "output_dir; build_trainer(output_dir) must save checkpoints there")
        return judged_comparison(base, next_checkpoint, resumed)


def judged_comparison(base: TrainerResumeResult, expected: str, resumed: str) -> TrainerResumeResult:
    """``base`` with NEXT (``expected``) compared against the resumed run's, and judged."""
    start, end = base.resume_step or 0, base.end_step or 0
    tol = base.atol if end <= start + 1 else max(base.atol, base.drift_atol)
    pieces, diffs, skipped = compare_layouts(expected, resumed, tol)
    losses = _losses(expected, resumed, start, base.atol, max(base.atol, base.drift_atol))
    return _judge(_replace(base, pieces=pieces, diffs=diffs[:200], losses=losses,
                           skipped=skipped))


def _replace(result: TrainerResumeResult, **changes: Any) -> TrainerResumeResult:
    from dataclasses import replace

    return replace(result, **changes)


def lacks(framework: str, missing: tuple[str, ...]) -> str:
    """``CKPT lacks rng (rng_state.pth)``: each missing kind with where it would be."""
    names = [f"{k} ({EXPECTED.get(framework, {}).get(k, k)})" for k in missing]
    return f"CKPT lacks {', '.join(names)}"


def _next(result: TrainerResumeResult) -> str:
    return f"the run's step {result.end_step}" if result.run_steps else \
        f"NEXT (step {result.end_step})"


def _judge(result: TrainerResumeResult) -> TrainerResumeResult:
    bad = [p for p in result.pieces if not p.ok]
    loss_bad = [r for r in result.losses if r.status == "differs"]
    if not bad and not loss_bad:
        close = any(d.status == "close" for d in result.diffs)
        status: Status = "within_tolerance" if close else "identical"
        how = f"within atol {max(result.atol, result.drift_atol)}" if close else "bitwise"
        return _replace(result, status=status, verdict=(
            f"resumed from step {result.resume_step} through {result.framework}'s own resume "
            f"path: {_next(result)} reproduced {how}"))
    parts = [f"{p.name} ({p.kind}: {p.differing} of {p.leaves} differ, first {p.first})" for p in bad]
    first = f"; first loss that differs at step {loss_bad[0].step}" if loss_bad else ""
    cause = (f"{lacks(result.framework, result.missing)}, so the resumed run started without "
             "it; ") if result.missing else ""
    return _replace(result, status="diverged", verdict=(
        f"{cause}the resumed run differs from {_next(result)} in {'; '.join(parts) or 'its losses'}"
        f"{first}{_unsaved_rng(result)}"))


def _unsaved_rng(result: TrainerResumeResult) -> str:
    """Name the RNG state a framework never saves (Lightning), the likely cause left unchecked."""
    why = None if result.missing else unsaved_rng(result.framework)
    if why is None:
        return ""
    # not proven: the checkpoint cannot hold it, so it cannot be restored to test it
    return (f"; not checked: {why}, so randomness drawn after the "
            "resume (a DataLoader with shuffle=True, dropout) restarts from the seed; shuffle "
            "with a sampler seeded per epoch (DistributedSampler) or save the RNG state yourself")


def _run_worker(recipe: str, framework: str, checkpoint: str, out: str, tmp: str) -> str | None:
    """Run the resume in a fresh Python; None on success, else the recipe's whole error."""
    error = os.path.join(tmp, "error.txt")
    cmd = [sys.executable, "-m", "ckpttools.ops.resume.trainer_worker", recipe, framework,
           os.path.abspath(checkpoint), out, error]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode == 0:
        return None
    if os.path.exists(error):
        with open(error, encoding="utf-8") as f:
            return " ".join(f.read().split())  # the whole message, on one line
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])
    return f"the resume process exited {proc.returncode}: {tail}"


def _piece_of(key: str, layout: TrainerLayout | None) -> tuple[str, str]:
    if layout is not None:
        for p in sorted(layout.pieces, key=lambda p: -len(p.key)):
            if p.key and (key == p.key or key.startswith(p.key + ".")):
                return p.name, p.kind
    return "other", "other"


def compare_layouts(expected: str, resumed: str, atol: float) -> tuple[
        tuple[PieceResult, ...], tuple[TensorDiff, ...], tuple[str, ...]]:
    """Every tensor and value of ``expected`` against ``resumed``, grouped by piece."""
    with open_checkpoint(expected) as a, open_checkpoint(resumed) as b:
        layout = describe_trainer(a)
        theirs = {e.key: e for e in b.entries()}
        counts: dict[tuple[str, str], list[int | str]] = {}
        diffs: list[TensorDiff] = []
        skipped: set[str] = set()
        for e in a.entries():
            name, kind = _piece_of(e.key, layout)
            if kind in NOT_COMPARED:
                skipped.add(name)
                continue
            d = _compare(a, b, e, theirs.get(e.key), atol)
            row = counts.setdefault((name, kind), [0, 0, ""])
            row[0] = int(row[0]) + 1
            if not d.ok:
                row[1] = int(row[1]) + 1
                row[2] = row[2] or e.key
                diffs.append(d)
    pieces = tuple(PieceResult(n, k, int(r[0]), int(r[1]), str(r[2])) for (n, k), r in counts.items())
    return pieces, tuple(diffs), tuple(sorted(skipped))


def _compare(a: Any, b: Any, entry: Any, other: Any, atol: float) -> TensorDiff:
    from ckpttools.entries import TensorEntry

    if other is None:
        return TensorDiff(entry.key, "missing")
    if isinstance(entry, TensorEntry):
        if not isinstance(other, TensorEntry):
            return TensorDiff(entry.key, "mismatch", None, "tensor vs value")
        return compare_leaf(entry.key, a.load(entry.key), b.load(entry.key), atol)
    return compare_leaf(entry.key, entry.value, getattr(other, "value", None), atol)


def _losses(expected: str, resumed: str, start: int, atol: float,
            drift_atol: float) -> tuple[LossRow, ...]:
    """HF Trainer's logged losses after ``start``: NEXT's ``trainer_state.json`` against the
    run's; the first resumed step is held to ``atol``, later ones to ``drift_atol``."""
    def read(folder: str) -> dict[int, float]:
        path = os.path.join(folder, "trainer_state.json")
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as f:
            history = json.load(f).get("log_history", [])
        return {int(h["step"]): float(h["loss"]) for h in history
                if isinstance(h, dict) and "loss" in h and "step" in h}

    ref, got = read(expected), read(resumed)
    rows = []
    for step in sorted(s for s in ref if s > start):
        r, g = ref[step], got.get(step)
        diff = None if g is None else abs(r - g)
        tol = atol if step == start + 1 else drift_atol
        status = ("resumed-only" if g is None else "identical" if diff == 0
                  else "close" if diff is not None and diff <= tol else "differs")
        rows.append(LossRow(step, r, g, diff, status))  # type: ignore[arg-type]
    return tuple(rows)
