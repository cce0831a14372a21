"""Running a recipe for ``verify-resume``: the uninterrupted run and resumes in this process.

Resumes in a fresh process, which is what a real restart is, are in ``resume_fresh``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttools.ops.resume.recipe import (
    DEFAULT_SEED, Recipe, TrainObjects, apply_state, build_objects, capture_state, checkpoint_step, run_step,
    seed_all, write_checkpoint,
)
from ckpttools.ops.resume.compare import Fingerprint, TensorDiff, fingerprint, match_fingerprints

SavePath = str | Callable[[dict[str, Any]], str]
KeepFirst = Callable[[dict[str, Any]], None]
OnStep = Callable[[int, dict[str, Any]], None]  # (completed steps, live state)


@dataclass
class RunTrace:
    """Losses by step, the state after the first step run (when more follow) and after the last."""

    losses: dict[int, float] = field(default_factory=dict)
    first: dict[str, Any] | None = None
    final: dict[str, Any] | None = None


def run_steps(recipe: Recipe, objs: TrainObjects, start: int, end: int, *,
              save_at: int | None = None, save_path: SavePath | None = None,
              loss: float | None = None, keep_first: KeepFirst | None = None,
              on_saved: Callable[[str], None] | None = None,
              on_step: OnStep | None = None) -> RunTrace:
    """Run steps ``start .. end-1``; capture the state after the first resumed step and the last.

    With ``save_at``, write the state before step ``save_at`` to ``save_path`` (or the path it
    returns for the state) through the recipe;
    the first resumed step is then ``save_at``. The final state holds the live tensors: ``objs``
    must not train further. With ``keep_first``, the state after the first resumed step is
    handed to it live (to write or compare at once) instead of being copied into the trace.
    ``on_saved`` is called with the checkpoint's path once it is written; ``on_step`` with the
    live state after each step (the drift curve).
    """
    trace = RunTrace()
    first = start if save_at is None else save_at
    for i in range(start, end):
        if i == save_at and save_path is not None:
            state = capture_state(objs, i, loss, copy=False)
            path = save_path(state) if callable(save_path) else save_path
            write_checkpoint(recipe, path, state)
            if on_saved is not None:
                on_saved(path)
        loss = run_step(recipe, objs, i)
        trace.losses[i] = loss
        if on_step is not None:
            on_step(i + 1, capture_state(objs, i + 1, loss, copy=False))
        if i == first and end > first + 1:  # with one step, the final state is the first one
            if keep_first is not None:
                keep_first(capture_state(objs, i + 1, loss, copy=False))
            else:
                trace.first = capture_state(objs, i + 1, loss)
    trace.final = capture_state(objs, end, loss, copy=False)
    return trace


def run_uninterrupted(recipe: Recipe, steps: int, resume_at: int, save_path: SavePath | None,
                      seed: int = DEFAULT_SEED, keep_first: KeepFirst | None = None,
                      on_saved: Callable[[str], None] | None = None,
                      on_step: OnStep | None = None) -> RunTrace:
    """The reference run: fresh objects from ``seed``, steps ``0 .. steps-1``, saving at ``resume_at``."""
    seed_all(seed)
    objs = build_objects(recipe)
    return run_steps(recipe, objs, 0, steps, save_at=resume_at, save_path=save_path, keep_first=keep_first,
                     on_saved=on_saved, on_step=on_step)


class FirstStepCheck:
    """A ``keep_first`` that checks the resumed state after the first step against the reference's fingerprint.

    ``reference`` is called once, when that state exists, and returns the fingerprint (None: not
    observed). When the state matches, ``rows`` holds the identical rows and nothing is copied;
    else ``kept`` holds what ``keep`` made of the live state (a copy, or the file it wrote), to
    compare values with.
    """

    def __init__(self, reference: Callable[[], Fingerprint | None], keep: Callable[[dict[str, Any]], Any]) -> None:
        self.reference, self.keep = reference, keep
        self.observed = False
        self.rows: tuple[TensorDiff, ...] = ()
        self.kept: Any = None

    def __call__(self, live: dict[str, Any]) -> None:
        self.observed = True
        expected = self.reference()
        if expected is None:
            return
        rows = state_matches(expected, live)
        if rows is None:
            self.kept = self.keep(live)
        else:
            self.rows = rows


def state_matches(expected: Fingerprint, state: dict[str, Any]) -> tuple[TensorDiff, ...] | None:
    """The identical rows when ``state`` has the fingerprint ``expected``, else None."""
    return match_fingerprints(expected, fingerprint(state))


def save_state(state: dict[str, Any], path: str) -> None:
    """torch.save for ckpttools' own short-lived files: no CRC32 over every byte (read back at once)."""
    import torch

    try:
        from torch.utils.serialization import config
    except ImportError:  # NOTE(torch<2.6): no serialization config; the CRC is computed
        torch.save(state, path)
        return
    with config.patch({"save.compute_crc32": False}):
        torch.save(state, path)


def state_at(recipe: Recipe, step: int, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The uninterrupted run's complete state after ``step`` steps (run again, for attribution)."""
    seed_all(seed)
    objs = build_objects(recipe)
    loss = None
    for i in range(step):
        loss = run_step(recipe, objs, i)
    return capture_state(objs, step, loss, copy=False)


def resume_in_process(recipe: Recipe, state: dict[str, Any], where: str, end: int,
                      reset: frozenset[str] = frozenset(), seed: int = DEFAULT_SEED, *,
                      copy: bool = True, keep_first: KeepFirst | None = None,
                      on_step: OnStep | None = None) -> RunTrace:
    """Build fresh objects, load ``state`` (pieces in ``reset`` stay fresh), run to ``end``.

    Without ``copy``, training may change ``state``'s tensors in place. ``keep_first`` as in ``run_steps``.
    """
    seed_all(seed)
    objs = build_objects(recipe)
    apply_state(recipe, objs, state, where, reset, seed, copy=copy)
    return run_steps(recipe, objs, checkpoint_step(state, where), end, keep_first=keep_first,
                     on_step=on_step)


class TempPlace:
    """Picks the folder for the run's checkpoint once its size is known.

    A memory-backed ``/dev/shm`` when it has room for the checkpoint and the resumed states (the
    checkpoint is still a real file, written and read by torch), else ``workdir`` or the
    system's temporary folder. Used as ``save_path``; the folder lives as long as ``stack``.
    """

    def __init__(self, stack: ExitStack, workdir: str | None) -> None:
        self.stack, self.workdir, self.dir = stack, workdir, None

    def __call__(self, state: dict[str, Any]) -> str:
        base = self.workdir
        if base is None:
            shm = Path("/dev/shm")
            need = 3 * state_nbytes(state) + 2**26
            if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > need:
                base = str(shm)
        self.dir = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="ckpttools-verify-", dir=base))
        return self.file("resume.pt")

    def file(self, name: str) -> str:
        """A path in the folder (chosen by the first call)."""
        return str(Path(str(self.dir)) / name)


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a nested state."""
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return state.numel() * state.element_size() if hasattr(state, "element_size") else 0
