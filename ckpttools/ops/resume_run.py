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
_WORKER = "import sys; from ckpttools.ops.resume_run import worker_main; sys.exit(worker_main())"


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


class FreshProcess:
    """A new Python process that resumes from a checkpoint file, as a restarted job would.

    It starts at once and imports torch and the recipe while this process trains the
    uninterrupted run; ``resume`` then hands it the checkpoint. It shares no state with this
    process: everything it knows comes from the recipe and the file.
    """

    def __init__(self, recipe: Recipe, workdir: str | None = None) -> None:
        if not recipe.spec:
            raise SpecError("recipe: a fresh-process resume needs a recipe spec (path or module), not an object")
        self.spec = str(Path(recipe.spec).resolve()) if Path(recipe.spec).is_file() else recipe.spec
        self.tmp = tempfile.mkdtemp(prefix="ckpttools-resume-", dir=workdir)
        self.log = open(Path(self.tmp) / "output.txt", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=self.log,
                                     stderr=self.log, text=True)
        self._send({"recipe": self.spec, "sys_path": [p for p in sys.path if p]})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process failed early; resume() reports why

    def resume(self, checkpoint: str, end: int, *, trust: bool = False, seed: int = DEFAULT_SEED,
               outdir: str | None = None) -> RunTrace:
        """Resume from ``checkpoint`` to step ``end`` in the new process and return its trace.

        Raises:
            CkptError: the same error the resume raised in the new process.
        """
        out = Path(outdir or self.tmp)
        request = {"checkpoint": str(Path(checkpoint).resolve()), "end": end, "trust": trust, "seed": seed,
                   "out": str(out / "trace.pt"), "error": str(Path(self.tmp) / "error.json")}
        self._send(request)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise _worker_error(self.spec, request["error"], self.proc.returncode, Path(self.tmp) / "output.txt")
        data = _torch_load(request["out"], trust=False)
        return RunTrace(losses={int(k): float(v) for k, v in data["losses"].items()},
                        first=data["first"], final=data["final"])

    def close(self) -> None:
        """Stop the process if it still runs and remove its files."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> FreshProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resume_in_fresh_process(recipe: Recipe, checkpoint: str, end: int, *, trust: bool = False,
                            seed: int = DEFAULT_SEED, workdir: str | None = None) -> RunTrace:
    """Resume from the file ``checkpoint`` in a new Python process (see ``FreshProcess``)."""
    with FreshProcess(recipe, workdir) as process:
        return process.resume(checkpoint, end, trust=trust, seed=seed)


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


def _worker_error(spec: str, error_path: str, code: int, log: Path) -> CkptError:
    error_file = Path(error_path)
    if error_file.exists():
        info = json.loads(error_file.read_text())
        cls = getattr(errors, info["type"], None)
        if isinstance(cls, type) and issubclass(cls, CkptError) and cls is not CkptError:
            return cls(info["message"])
        return SpecError(info["message"])
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return SpecError(f"{spec}: the resumed run's process failed (exit {code}): {(lines or ['no output'])[-1]}")


def worker_main() -> int:
    """Entry point of the fresh process: two JSON lines on stdin, the recipe then the request."""
    hello = json.loads(sys.stdin.readline())
    for entry in reversed(hello["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    recipe: Recipe | None = None
    try:
        import torch

        recipe = load_recipe(hello["recipe"])  # while the parent still trains
    except Exception as e:
        early: Exception | None = e
    else:
        early = None
    line = sys.stdin.readline()
    if not line:
        return 3  # the parent went away
    request = json.loads(line)
    try:
        if early is not None or recipe is None:
            raise early or SpecError("recipe did not load")
        state = read_checkpoint(recipe, request["checkpoint"], trust=request["trust"], lazy=False)
        trace = resume_in_process(recipe, state, request["checkpoint"], request["end"], seed=request["seed"],
                                  copy=False)
        torch.save({"losses": trace.losses, "first": trace.first, "final": trace.final}, request["out"])
    except CkptError as e:
        Path(request["error"]).write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        return 2
    except Exception as e:  # the recipe's own bug, reported as one line by the parent
        message = f"{hello['recipe']}: resumed run failed: {type(e).__name__}: {e}"
        Path(request["error"]).write_text(json.dumps({"type": "SpecError", "message": message}))
        return 2
    return 0
