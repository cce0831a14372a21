"""Running a recipe for ``verify-resume``: the uninterrupted run, resumes in this process, and
resumes in a fresh process (``python -c`` running ``worker_main``), which is what a real restart is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttools import errors
from ckpttools.errors import CkptError, SpecError
from ckpttools.ops.recipe import (
    DEFAULT_SEED, Recipe, TrainObjects, _torch_load, apply_state, build_objects, capture_state,
    checkpoint_step, load_recipe, read_checkpoint, run_step, seed_all, write_checkpoint,
)

SavePath = str | Callable[[dict[str, Any]], str]
_WORKER = "import sys; from ckpttools.ops.resume_run import worker_main; sys.exit(worker_main(sys.argv[1]))"


@dataclass
class RunTrace:
    """Losses by step, the state after the first step run (when more follow) and after the last."""

    losses: dict[int, float] = field(default_factory=dict)
    first: dict[str, Any] | None = None
    final: dict[str, Any] | None = None


def run_steps(recipe: Recipe, objs: TrainObjects, start: int, end: int, *,
              save_at: int | None = None, save_path: SavePath | None = None,
              loss: float | None = None) -> RunTrace:
    """Run steps ``start .. end-1``; capture the state after the first resumed step and the last.

    With ``save_at``, write the state before step ``save_at`` to ``save_path`` (or the path it
    returns for the state) through the recipe;
    the first resumed step is then ``save_at``. The final state holds the live tensors: ``objs``
    must not train further.
    """
    trace = RunTrace()
    first = start if save_at is None else save_at
    for i in range(start, end):
        if i == save_at and save_path is not None:
            state = capture_state(objs, i, loss, copy=False)
            write_checkpoint(recipe, save_path(state) if callable(save_path) else save_path, state)
        loss = run_step(recipe, objs, i)
        trace.losses[i] = loss
        if i == first and end > first + 1:  # with one step, the final state is the first one
            trace.first = capture_state(objs, i + 1, loss)
    trace.final = capture_state(objs, end, loss, copy=False)
    return trace


def run_uninterrupted(recipe: Recipe, steps: int, resume_at: int, save_path: SavePath | None,
                      seed: int = DEFAULT_SEED) -> RunTrace:
    """The reference run: fresh objects from ``seed``, steps ``0 .. steps-1``, saving at ``resume_at``."""
    seed_all(seed)
    objs = build_objects(recipe)
    return run_steps(recipe, objs, 0, steps, save_at=resume_at, save_path=save_path)


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
                      copy: bool = True) -> RunTrace:
    """Build fresh objects, load ``state`` (pieces in ``reset`` stay fresh), run to ``end``.

    Without ``copy``, training may change ``state``'s tensors in place.
    """
    seed_all(seed)
    objs = build_objects(recipe)
    apply_state(recipe, objs, state, where, reset, seed, copy=copy)
    return run_steps(recipe, objs, checkpoint_step(state, where), end)


def resume_in_fresh_process(recipe: Recipe, checkpoint: str, end: int, *, trust: bool = False,
                            seed: int = DEFAULT_SEED, workdir: str | None = None) -> RunTrace:
    """Resume from the file ``checkpoint`` in a new Python process, as a restarted job would.

    Raises:
        SpecError: the recipe was passed as an object, not a spec a new process can import.
        CkptError: the same error the resume raised in the new process.
    """
    if not recipe.spec:
        raise SpecError("recipe: a fresh-process resume needs a recipe spec (path or module), not an object")
    spec = str(Path(recipe.spec).resolve()) if Path(recipe.spec).is_file() else recipe.spec
    with tempfile.TemporaryDirectory(prefix="ckpttools-resume-", dir=workdir) as tmp:
        request = {"recipe": spec, "checkpoint": str(Path(checkpoint).resolve()), "end": end, "trust": trust,
                   "seed": seed, "out": str(Path(tmp) / "trace.pt"), "error": str(Path(tmp) / "error.json"),
                   "sys_path": [p for p in sys.path if p]}
        request_path = Path(tmp) / "request.json"
        request_path.write_text(json.dumps(request))
        proc = subprocess.run([sys.executable, "-c", _WORKER, str(request_path)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise _worker_error(request, proc)
        data = _torch_load(request["out"], trust=False)
    return RunTrace(losses={int(k): float(v) for k, v in data["losses"].items()},
                    first=data["first"], final=data["final"])


class TempPlace:
    """Picks the folder for the run's checkpoint once its size is known.

    A memory-backed ``/dev/shm`` when it has room for the checkpoint and the traces (the
    checkpoint is still a real file, written and read by torch), else ``workdir`` or the
    system's temporary folder. Used as ``save_path``; the folder lives as long as ``stack``.
    """

    def __init__(self, stack: ExitStack, workdir: str | None) -> None:
        self.stack, self.workdir, self.dir = stack, workdir, None

    def __call__(self, state: dict[str, Any]) -> str:
        base = self.workdir
        if base is None:
            shm = Path("/dev/shm")
            need = 4 * state_nbytes(state) + 2**26
            if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > need:
                base = str(shm)
        self.dir = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="ckpttools-verify-", dir=base))
        return str(Path(self.dir) / "resume.pt")


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a nested state."""
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return state.numel() * state.element_size() if hasattr(state, "element_size") else 0


def _worker_error(request: dict[str, Any], proc: subprocess.CompletedProcess[str]) -> CkptError:
    error_file = Path(request["error"])
    if error_file.exists():
        info = json.loads(error_file.read_text())
        cls = getattr(errors, info["type"], None)
        if isinstance(cls, type) and issubclass(cls, CkptError) and cls is not CkptError:
            return cls(info["message"])
        return SpecError(info["message"])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return SpecError(f"{request['recipe']}: the resumed run's process failed (exit {proc.returncode}): {tail}")


def worker_main(request_path: str) -> int:
    """Entry point of the fresh process: resume from a checkpoint and save the trace."""
    request = json.loads(Path(request_path).read_text())
    for entry in reversed(request["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        import torch

        recipe = load_recipe(request["recipe"])
        state = read_checkpoint(recipe, request["checkpoint"], trust=request["trust"], lazy=False)
        trace = resume_in_process(recipe, state, request["checkpoint"], request["end"], seed=request["seed"],
                                  copy=False)
        torch.save({"losses": trace.losses, "first": trace.first, "final": trace.final}, request["out"])
    except CkptError as e:
        Path(request["error"]).write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        return 2
    except Exception as e:  # the recipe's own bug, reported as one line by the parent
        message = f"{request['recipe']}: resumed run failed: {type(e).__name__}: {e}"
        Path(request["error"]).write_text(json.dumps({"type": "SpecError", "message": message}))
        return 2
    return 0
