"""Resuming in a fresh process for ``verify-resume``, as a restarted job would.

The process starts before the uninterrupted run and holds no recipe state: it imports the recipe
and builds the recipe's objects itself while this process trains, then reads the checkpoint
file, resumes, and checks its state against the uninterrupted run's fingerprints (per-leaf
CRC-32s, see ``resume_compare``). Only the result comes back (one JSON file): the losses and,
where a fingerprint differs or the checkpoint lacks a piece of state, the file where it wrote the
state concerned, so that the values are compared here. An identical resume moves no tensors.

On Linux the process is forked from this one by ``prefork``, right after importing torch and
torch._dynamo and before anything else runs, which saves the new interpreter's seconds of
imports. Forking a process whose OpenMP threads have started hangs the child at its first
parallel op (GNU libgomp), so ``prefork`` does it only while torch is not yet imported; else the
process is a new Python (``python -c``).

Messages on its stdin, one JSON line each: the recipe (at start), the request (checkpoint, run
length; it comes as soon as the checkpoint is written), the reference's fingerprint after the
first resumed step, then its final fingerprint with the uninterrupted run's losses. The process
reads each when it needs it, so it resumes while the uninterrupted run continues.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ckpttools import errors
from ckpttools.errors import CkptError, SpecError
from ckpttools.ops.resume.recipe import (
    DEFAULT_SEED, Recipe, TrainObjects, _torch_load, apply_state, build_objects, checkpoint_step,
    load_recipe, missing_pieces, read_checkpoint, seed_all,
)
from ckpttools.ops.resume.compare import Fingerprint, TensorDiff
from ckpttools.ops.resume.run import FirstStepCheck, RunTrace, run_steps, save_state, state_matches

_WORKER = "import sys; from ckpttools.ops.resume.fresh import worker_main; sys.exit(worker_main())"


class _Forked:
    """The part of ``subprocess.Popen`` that ``FreshProcess`` uses, for a forked process."""

    def __init__(self, pid: int, stdin: IO[str]) -> None:
        self.pid, self.stdin, self.returncode = pid, stdin, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


@dataclass
class Worker:
    """A started process that waits for its recipe: its folder (log, result) and the process."""

    tmp: str
    log: IO[str]
    proc: subprocess.Popen[str] | _Forked

    def close(self) -> None:
        """Stop the process if it still runs and remove its folder (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefork(workdir: str | None = None) -> Worker | None:
    """Fork the fresh process now, if this process can be forked safely.

    Call it first thing, before any torch op: it imports torch and torch._dynamo (which building an
    optimizer imports) and forks at once. Unless the environment sets ``OMP_WAIT_POLICY``, it is
    set to ``PASSIVE`` first. Returns None where fork is unavailable or torch is
    already imported (its OpenMP threads may have started); ``FreshProcess`` then starts a new
    Python instead.
    """
    if sys.platform != "linux" or "torch" in sys.modules:
        return None
    # Both processes train at once: OpenMP threads that spin while idle would take the other's
    # cores (read when torch loads libgomp; it changes no result, only how idle threads wait).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    importlib.import_module("torch._dynamo")  # with torch: imported once, here, for both processes

    tmp = tempfile.mkdtemp(prefix="ckpttools-resume-", dir=workdir)
    log = open(Path(tmp) / "output.txt", "w")  # noqa: SIM115 - closed by Worker.close
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child writes this process's pending output again
    read, write = os.pipe()
    gc.freeze()  # the child's collections then leave the shared objects' pages uncopied
    pid = os.fork()
    if pid == 0:  # the fresh process: never returns
        code = 2
        try:
            os.close(write)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with os.fdopen(read) as stdin:
                code = worker_main(stdin)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
    gc.unfreeze()
    os.close(read)
    return Worker(tmp, log, _Forked(pid, os.fdopen(write, "w")))


def _spawn(workdir: str | None) -> Worker:
    """Start the fresh process as a new Python."""
    tmp = tempfile.mkdtemp(prefix="ckpttools-resume-", dir=workdir)
    log = open(Path(tmp) / "output.txt", "w")  # noqa: SIM115 - closed by Worker.close
    proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=log, stderr=log,
                            text=True)
    return Worker(tmp, log, proc)


@dataclass(frozen=True)
class FreshResume:
    """What the fresh process reports.

    Attributes:
        trace: its losses, and its final state when it wrote one (else None).
        first_diffs: the identical rows after the first resumed step (empty: not observed, or it differed).
        first_state: its state after the first resumed step when that differed from the reference's.
        final_diffs: the identical rows of the final state, or None: it differed, compare ``trace.final``.
    """

    trace: RunTrace
    first_diffs: tuple[TensorDiff, ...]
    first_state: dict[str, Any] | None
    final_diffs: tuple[TensorDiff, ...] | None


class FreshProcess:
    """A fresh process that resumes from a checkpoint file (see the module docstring).

    Use ``start`` once the checkpoint is written, ``send_first`` with the reference's fingerprint
    after the first resumed step, then ``finish`` with its final fingerprint.
    """

    def __init__(self, recipe: Recipe, workdir: str | None = None, seed: int = DEFAULT_SEED,
                 worker: Worker | None = None) -> None:
        if not recipe.spec:
            raise SpecError("recipe: a fresh-process resume needs a recipe spec (path or module), not an object")
        self.spec = str(Path(recipe.spec).resolve()) if Path(recipe.spec).is_file() else recipe.spec
        self.worker = worker or _spawn(workdir)
        self.tmp, self.proc = self.worker.tmp, self.worker.proc
        self.out = Path(self.tmp) / "result.json"
        self._send({"recipe": self.spec, "sys_path": [p for p in sys.path if p], "seed": seed})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process failed early; finish() reports why

    def start(self, checkpoint: str, end: int, *, trust: bool = False, outdir: str | None = None) -> None:
        """Resume from ``checkpoint`` to step ``end`` (it may start while the reference still trains).

        Args:
            checkpoint: the checkpoint file, completely written.
            end: completed steps at the end.
            trust: full unpickling instead of ``weights_only``.
            outdir: where the process writes the states it writes.
        """
        self._send({"checkpoint": str(Path(checkpoint).resolve()), "end": end, "trust": trust,
                    "outdir": str(outdir or self.tmp), "out": str(self.out),
                    "error": str(Path(self.tmp) / "error.json")})

    def send_first(self, first: Fingerprint | None) -> None:
        """The reference's fingerprint after the first resumed step, or None: not observed."""
        self._send({"first": first})

    def finish(self, final: Fingerprint, losses: dict[int, float], *, trust: bool = False) -> FreshResume:
        """Hand over the reference's final fingerprint and losses; wait for the result.

        Raises:
            CkptError: the same error the resume raised in the fresh process.
        """
        self._send({"final": final, "losses": {str(k): v for k, v in losses.items()}})
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        if self.proc.wait() != 0:
            raise _worker_error(self.spec, Path(self.tmp) / "error.json", self.proc.returncode,
                                Path(self.tmp) / "output.txt")
        data = json.loads(self.out.read_text())
        final = _torch_load(data["final_state"], trust) if data["final_state"] else None
        first = _torch_load(data["first_state"], trust) if data["first_state"] else None
        trace = RunTrace(losses={int(k): float(v) for k, v in data["losses"].items()}, final=final)
        final_rows = None if data["final_diffs"] is None else _diffs(data["final_diffs"])
        return FreshResume(trace, _diffs(data["first_diffs"]), first, final_rows)

    def close(self) -> None:
        """Stop the process if it still runs and remove its files."""
        self.worker.close()

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


def worker_main(stdin: IO[str] | None = None) -> int:
    """Entry point of the fresh process: JSON lines on ``stdin`` (see the module docstring)."""
    stdin = stdin or sys.stdin
    hello = json.loads(stdin.readline())
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
    line = stdin.readline()
    if not line:
        return 3  # the parent went away
    request = json.loads(line)
    try:
        if early is not None or recipe is None or objs is None:
            raise early or SpecError(f"{hello['recipe']}: recipe did not load")
        _resume(recipe, objs, request, hello["seed"], stdin)
    except CkptError as e:
        Path(request["error"]).write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        return 2
    except Exception as e:  # the recipe's own bug, reported as one line by the parent
        message = f"{hello['recipe']}: resumed run failed: {type(e).__name__}: {e}"
        Path(request["error"]).write_text(json.dumps({"type": "SpecError", "message": message}))
        return 2
    return 0


def _resume(recipe: Recipe, objs: TrainObjects, request: dict[str, Any], seed: int, stdin: IO[str]) -> None:
    """Resume into the prebuilt ``objs``, check against the reference's fingerprints, write the result."""
    where, trust, outdir = request["checkpoint"], request["trust"], Path(request["outdir"])
    state = read_checkpoint(recipe, where, trust=trust)
    missing = missing_pieces(recipe, state)
    apply_state(recipe, objs, state, where, seed=seed, copy=False)
    start = checkpoint_step(state, where)
    del state  # the optimizer keeps what it needs

    def write(name: str, state: dict[str, Any]) -> str:
        save_state(state, str(outdir / name))
        return str(outdir / name)

    first = FirstStepCheck(lambda: json.loads(stdin.readline())["first"], lambda live: write("resumed_first.pt", live))
    trace = run_steps(recipe, objs, start, request["end"], keep_first=first)
    if not first.observed:
        stdin.readline()  # the parent's "not observed"
    reference = json.loads(stdin.readline())
    final_rows = state_matches(reference["final"], trace.final or {})
    ref_losses = {int(k): v for k, v in reference["losses"].items()}
    same = final_rows is not None and first.kept is None and _same_losses(ref_losses, trace.losses)
    final_path = write("resumed_final.pt", trace.final or {}) if missing or not same else None
    Path(request["out"]).write_text(json.dumps({
        "losses": {str(k): v for k, v in trace.losses.items()},
        "first_diffs": [d.to_dict() for d in first.rows], "first_state": first.kept,
        "final_diffs": None if final_rows is None else [d.to_dict() for d in final_rows],
        "final_state": final_path}))


def _same_losses(reference: dict[int, float], resumed: dict[int, float]) -> bool:
    return all(step in reference and (reference[step] == loss or (math.isnan(loss) and math.isnan(reference[step])))
               for step, loss in resumed.items())
