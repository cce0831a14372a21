"""Resuming in a fresh Python process for ``verify-resume``, as a restarted job would.

The process (``python -c`` running ``worker_main``) starts at once: it imports torch and the
recipe and builds the recipe's objects while this process trains the uninterrupted run. It then
reads the checkpoint file, resumes, and compares its state with the uninterrupted run's, which
this process wrote to files beside the checkpoint. Only the comparison comes back (one JSON
file); the resumed final state is written too when attribution may need it (something differs
or a piece of state is missing). It shares no state with this process: everything it knows
comes from the recipe and the files.

Messages on its stdin, one JSON line each: the recipe (at start), the request (checkpoint, run
length; it can come as soon as the checkpoint is written), the reference's state after the first
resumed step, then its final state with the uninterrupted run's losses. The process reads each
reference when it needs it, so it resumes while the uninterrupted run continues.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpttools import errors
from ckpttools.errors import CkptError, SpecError
from ckpttools.ops.recipe import (
    DEFAULT_SEED, Recipe, TrainObjects, _torch_load, apply_state, build_objects, checkpoint_step,
    load_recipe, missing_pieces, read_checkpoint, seed_all,
)
from ckpttools.ops.resume_compare import TensorDiff, compare_states
from ckpttools.ops.resume_run import RunTrace, run_steps, save_state

_WORKER = "import sys; from ckpttools.ops.resume_fresh import worker_main; sys.exit(worker_main())"


@dataclass(frozen=True)
class FreshResume:
    """What the fresh process reports.

    Attributes:
        trace: its losses, and its final state when it wrote one (else None).
        first_diffs: the state after the first resumed step against the reference's (empty: not observed).
        final_diffs: the final state against the reference's.
    """

    trace: RunTrace
    first_diffs: tuple[TensorDiff, ...]
    final_diffs: tuple[TensorDiff, ...]


class FreshProcess:
    """A new Python process that resumes from a checkpoint file (see the module docstring).

    Use ``start`` once the checkpoint is written, then ``finish`` with the reference's final state.
    """

    def __init__(self, recipe: Recipe, workdir: str | None = None, seed: int = DEFAULT_SEED) -> None:
        if not recipe.spec:
            raise SpecError("recipe: a fresh-process resume needs a recipe spec (path or module), not an object")
        self.spec = str(Path(recipe.spec).resolve()) if Path(recipe.spec).is_file() else recipe.spec
        self.tmp = tempfile.mkdtemp(prefix="ckpttools-resume-", dir=workdir)
        self.log = open(Path(self.tmp) / "output.txt", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=self.log,
                                     stderr=self.log, text=True)
        self.out = Path(self.tmp) / "result.json"
        self._send({"recipe": self.spec, "sys_path": [p for p in sys.path if p], "seed": seed})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process failed early; finish() reports why

    def start(self, checkpoint: str, end: int, *, first_atol: float, final_atol: float,
              trust: bool = False, outdir: str | None = None) -> None:
        """Resume from ``checkpoint`` to step ``end`` (it may start while the reference still trains).

        Args:
            checkpoint: the checkpoint file, completely written.
            end: completed steps at the end.
            first_atol: tolerance after the first resumed step.
            final_atol: tolerance for the final state.
            trust: full unpickling instead of ``weights_only``.
            outdir: where the process writes its final state when it writes one.
        """
        self._send({"checkpoint": str(Path(checkpoint).resolve()), "end": end, "trust": trust,
                    "first_atol": first_atol, "final_atol": final_atol,
                    "state_out": str(Path(outdir or self.tmp) / "resumed_final.pt"), "out": str(self.out),
                    "error": str(Path(self.tmp) / "error.json")})

    def send_first(self, first_ref: str | None) -> None:
        """The reference's state after the first resumed step (a torch.save file), or None: not observed."""
        self._send({"first_ref": first_ref})

    def finish(self, final_ref: str, losses: dict[int, float], *, trust: bool = False) -> FreshResume:
        """Hand over the reference's final state and losses; wait for the comparison.

        Raises:
            CkptError: the same error the resume raised in the new process.
        """
        self._send({"final_ref": final_ref, "losses": {str(k): v for k, v in losses.items()}})
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise _worker_error(self.spec, Path(self.tmp) / "error.json", self.proc.returncode,
                                Path(self.tmp) / "output.txt")
        data = json.loads(self.out.read_text())
        final = _torch_load(data["state"], trust) if data["state"] else None
        trace = RunTrace(losses={int(k): float(v) for k, v in data["losses"].items()}, final=final)
        return FreshResume(trace, _diffs(data["first_diffs"]), _diffs(data["final_diffs"]))

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


def _diffs(rows: list[dict[str, Any]]) -> tuple[TensorDiff, ...]:
    return tuple(TensorDiff(**row) for row in rows)


def _worker_error(spec: str, error_file: Path, code: int, log: Path) -> CkptError:
    if error_file.exists():
        info = json.loads(error_file.read_text())
        cls = getattr(errors, info["type"], None)
        if isinstance(cls, type) and issubclass(cls, CkptError) and cls is not CkptError:
            return cls(info["message"])
        return SpecError(info["message"])
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return SpecError(f"{spec}: the resumed run's process failed (exit {code}): {(lines or ['no output'])[-1]}")


def worker_main() -> int:
    """Entry point of the fresh process: JSON lines on stdin (see the module docstring)."""
    hello = json.loads(sys.stdin.readline())
    for entry in reversed(hello["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    early: Exception | None = None
    recipe: Recipe | None = None
    objs: TrainObjects | None = None
    try:  # while the parent still trains
        recipe = load_recipe(hello["recipe"])
        seed_all(hello["seed"])
        objs = build_objects(recipe)
    except Exception as e:
        early = e
    line = sys.stdin.readline()
    if not line:
        return 3  # the parent went away
    request = json.loads(line)
    try:
        if early is not None or recipe is None or objs is None:
            raise early or SpecError(f"{hello['recipe']}: recipe did not load")
        _resume(recipe, objs, request, hello["seed"])
    except CkptError as e:
        Path(request["error"]).write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        return 2
    except Exception as e:  # the recipe's own bug, reported as one line by the parent
        message = f"{hello['recipe']}: resumed run failed: {type(e).__name__}: {e}"
        Path(request["error"]).write_text(json.dumps({"type": "SpecError", "message": message}))
        return 2
    return 0


def _resume(recipe: Recipe, objs: TrainObjects, request: dict[str, Any], seed: int) -> None:
    """Resume into the prebuilt ``objs``, compare with the reference files, write the result."""
    where, trust = request["checkpoint"], request["trust"]
    state = read_checkpoint(recipe, where, trust=trust, lazy=False)
    missing = missing_pieces(recipe, state)
    apply_state(recipe, objs, state, where, seed=seed, copy=False)
    start = checkpoint_step(state, where)
    del state  # the optimizer keeps what it needs
    first: list[TensorDiff] = []
    pending = [True]  # the first reference is still to be read

    def compare_first(live: dict[str, Any] | None) -> None:
        pending.clear()
        ref = json.loads(sys.stdin.readline())["first_ref"]
        if ref is not None:  # compared live: no copy of the state after the first step
            first.extend(compare_states(_torch_load(ref, trust), live or {}, request["first_atol"]))

    trace = run_steps(recipe, objs, start, request["end"], keep_first=compare_first)
    if pending:
        compare_first(None)
    reference = json.loads(sys.stdin.readline())
    final = compare_states(_torch_load(reference["final_ref"], trust), trace.final or {}, request["final_atol"])
    ref_losses = {int(k): v for k, v in reference["losses"].items()}
    same = all(d.status == "identical" for d in (*first, *final)) and _same_losses(ref_losses, trace.losses)
    state_path = None
    if missing or not same:  # attribution compares with this run's final state
        state_path = request["state_out"]
        save_state(trace.final or {}, state_path)
    Path(request["out"]).write_text(json.dumps({
        "losses": {str(k): v for k, v in trace.losses.items()}, "state": state_path,
        "first_diffs": [d.to_dict() for d in first], "final_diffs": [d.to_dict() for d in final]}))


def _same_losses(reference: dict[int, float], resumed: dict[int, float]) -> bool:
    return all(step in reference and (reference[step] == loss or (math.isnan(loss) and math.isnan(reference[step])))
               for step, loss in resumed.items())
