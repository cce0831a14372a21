"""``verify-resume``: does resuming from a checkpoint reproduce the uninterrupted run, and if not, why.

Two modes. From two checkpoints (``CKPT`` and a later ``NEXT``): resume from CKPT in fresh
objects, run to NEXT's step and compare with NEXT. From a run (``steps``, ``resume_at``): train
uninterrupted, saving a real checkpoint at ``resume_at``; resume from that file in a fresh
process; compare losses step by step and the final state. The first resumed step is held to
``atol`` (bitwise by default); later steps to ``drift_atol``.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

from ckpttools.errors import CorruptCheckpointError, SpecError, UnsupportedError
from ckpttools.ops.resume.recipe import (
    DEFAULT_SEED, EPOCH, LOSS, MODEL, PIECES, STEP, Recipe, checkpoint_step, load_recipe, missing_pieces,
    read_checkpoint,
)
from ckpttools.ops.resume.attribution import LABELS, Attribution, Context, attribute
from ckpttools.ops.resume.compare import (
    Fingerprint, LossRow, TensorDiff, compare_losses, compare_states, fingerprint, worst,
)
from ckpttools.ops.resume.drift import DRIFT_PIECES, DriftRecorder, DriftRow, max_abs_difference
from ckpttools.ops.resume.fresh import FreshProcess, FreshResume, Worker
from ckpttools.ops.resume.run import (
    FirstStepCheck, RunTrace, TempPlace, resume_in_process, run_uninterrupted, state_at,
)

Status = Literal["identical", "within_tolerance", "diverged"]
COMPARED_KEYS = (STEP, MODEL, *PIECES.values())


@dataclass(frozen=True)
class ResumeResult:
    """What ``verify-resume`` found.

    Attributes:
        mode: ``checkpoints`` (CKPT against NEXT) or ``run`` (uninterrupted against resumed).
        recipe: the recipe as given.
        checkpoint: CKPT, or the checkpoint written at ``resume_at`` (deleted afterwards).
        next_checkpoint: NEXT (``checkpoints`` mode).
        resume_step: completed steps in the checkpoint; the resume runs ``batch(resume_step)`` first.
        end_step: completed steps at the end (NEXT's step, or ``steps``).
        status: identical, within_tolerance or diverged.
        diverged_step: the first step whose loss or state is out of tolerance.
        verdict: one line for the user.
        losses: per-step loss, reference against resumed.
        first_step_diffs: per-leaf state after the first resumed step (empty when not observable).
        final_diffs: per-leaf state at ``end_step``.
        missing: optional pieces of state the checkpoint lacks (resumed fresh).
        attributions: what each piece of state does to the resume.
        hints: what to set when no piece explains a difference.
        drift: per step and piece of state, max abs difference of the resumed run from the
            reference (asked for with ``drift=True``; NEXT's step only, in ``checkpoints`` mode).
        drift_note: where the drift comes from, or why there is none.
    """

    mode: Literal["checkpoints", "run"]
    recipe: str
    checkpoint: str
    next_checkpoint: str | None
    resume_step: int
    end_step: int
    atol: float
    drift_atol: float
    status: Status
    diverged_step: int | None
    verdict: str
    losses: tuple[LossRow, ...]
    first_step_diffs: tuple[TensorDiff, ...]
    final_diffs: tuple[TensorDiff, ...]
    missing: tuple[str, ...] = ()
    attributions: tuple[Attribution, ...] = ()
    hints: tuple[str, ...] = ()
    via: str | None = None
    fresh_process: bool = False
    drift: tuple[DriftRow, ...] = ()
    drift_note: str = ""

    @property
    def ok(self) -> bool:
        """True when the resume is identical or within tolerance."""
        return self.status != "diverged"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "recipe": self.recipe, "checkpoint": self.checkpoint,
            "next_checkpoint": self.next_checkpoint, "resume_step": self.resume_step, "end_step": self.end_step,
            "atol": self.atol, "drift_atol": self.drift_atol, "ok": self.ok, "status": self.status,
            "diverged_step": self.diverged_step, "verdict": self.verdict, "missing": list(self.missing),
            "via": self.via, "fresh_process": self.fresh_process,
            "losses": [r.to_dict() for r in self.losses],
            "first_step_diffs": [d.to_dict() for d in self.first_step_diffs],
            "final_diffs": [d.to_dict() for d in self.final_diffs],
            "attributions": [a.to_dict() for a in self.attributions], "hints": list(self.hints),
            "drift": [d.to_dict() for d in self.drift], "drift_note": self.drift_note,
        }


def verify_resume(recipe: str | Recipe | object, checkpoint: str | None = None,
                  next_checkpoint: str | None = None, *, steps: int | None = None,
                  resume_at: int | None = None, atol: float = 0.0, drift_atol: float = 0.0,
                  via: str | None = None, converter: Callable[..., Any] | None = None,
                  trust: bool = False, fresh_process: bool = True,
                  workdir: str | None = None, seed: int = DEFAULT_SEED,
                  on_progress: Callable[[str], None] | None = None, worker: Worker | None = None,
                  drift: bool = False) -> ResumeResult:
    """Check that resuming from a checkpoint reproduces training, and attribute any difference.

    Args:
        recipe: recipe spec (``path/recipe.py`` or ``package.module``), a loaded ``Recipe``, or an
            object holding the recipe functions (``fresh_process`` then has to be False).
        checkpoint: CKPT, with ``next_checkpoint`` (NEXT) for the two-checkpoint mode.
        next_checkpoint: a later checkpoint of the same run.
        steps: run length for the run mode.
        resume_at: the step at which the run mode saves and resumes.
        atol: tolerance for the first resumed step (0: bitwise).
        drift_atol: tolerance for later steps.
        via: ``safetensors`` to send the run mode's checkpoint through the converter.
        converter: the converter ``via`` uses (``convert_checkpoint``; ``ckpttools.verify_resume``
            and the CLI pass it), called as ``converter(src, dest, to=..., trust=...)``.
        trust: full unpickling of checkpoints instead of ``weights_only``.
        fresh_process: resume in a new Python process (run mode), as a restarted job would.
        workdir: where the run mode writes its temporary checkpoint.
        seed: seed for fresh objects and for RNG state a checkpoint lacks.
        on_progress: called with a short line as each phase starts.
        worker: the fresh process, started early by ``resume_fresh.prefork`` (else a new Python
            is started); it is closed when the run is done.
        drift: record each piece of state's max abs difference per step (``ResumeResult.drift``,
            the figure of ``--plot``); a fresh-process resume is replayed in this process for it.

    Returns:
        The result; ``ok`` is False when the resume diverged.

    Raises:
        SpecError: the recipe is unusable or the arguments do not name one mode.
        CkptError: a checkpoint cannot be read or lacks the model state.

    Example:
        >>> result = verify_resume("examples/tutorial_linear.py", steps=5, resume_at=3)
        >>> result.status
        'identical'
    """
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    say = on_progress or (lambda _: None)
    if checkpoint is not None and next_checkpoint is not None:
        if steps is not None or resume_at is not None or via is not None:
            raise SpecError("verify-resume: give either CKPT NEXT or --steps/--resume-at, not both")
        return _verify_checkpoints(rec, checkpoint, next_checkpoint, atol, drift_atol, trust, seed, say, drift)
    if steps is None or resume_at is None or checkpoint is not None:
        raise SpecError("verify-resume: give CKPT and NEXT, or --steps N and --resume-at K")
    if not 0 <= resume_at < steps:
        raise SpecError(f"verify-resume: --resume-at {resume_at} must be at least 0 and below --steps {steps}")
    if via is not None and converter is None:
        raise SpecError("verify-resume: via needs a converter (ckpttools.verify_resume passes convert_checkpoint)")
    return _verify_run(rec, steps, resume_at, atol=atol, drift_atol=drift_atol, via=via,
                       converter=converter, trust=trust,
                       fresh_process=fresh_process, workdir=workdir, seed=seed, say=say, worker=worker,
                       recorder=DriftRecorder(resume_at, steps) if drift else None)


def _normalise(state: dict[str, Any], where: str) -> dict[str, Any]:
    """The compared part of a checkpoint, with ``epoch`` read as ``step``."""
    out = {k: state[k] for k in COMPARED_KEYS if state.get(k) is not None}
    out[STEP] = checkpoint_step(state, where)
    out.pop(EPOCH, None)
    return out


def _verify_checkpoints(recipe: Recipe, ckpt: str, nxt: str, atol: float, drift_atol: float,
                        trust: bool, seed: int, say: Callable[[str], None], drift: bool = False) -> ResumeResult:
    state = read_checkpoint(recipe, ckpt, trust=trust)
    expected = read_checkpoint(recipe, nxt, trust=trust)
    start, end = checkpoint_step(state, ckpt), checkpoint_step(expected, nxt)
    if end <= start:
        raise SpecError(f"{nxt}: its step {end} is not after {ckpt}'s step {start}; pass the later checkpoint second")
    if not isinstance(expected.get(MODEL), dict):
        raise CorruptCheckpointError(f"{nxt}: checkpoint has no '{MODEL}' (the model state); nothing to compare")
    say(f"resuming {ckpt} at step {start}, running to step {end}")
    trace = resume_in_process(recipe, state, ckpt, end, seed=seed)
    missing = missing_pieces(recipe, state)
    expected_cmp, resumed_cmp, uncompared = _common_layout(recipe, _normalise(expected, nxt), trace.final or {},
                                                           missing)
    final = compare_states(expected_cmp, resumed_cmp, atol if end == start + 1 else drift_atol)
    # NEXT holds no earlier state: the drift is one point per piece, at NEXT's step
    rows = tuple(DriftRow(end, piece, max_abs_difference(expected_cmp[key], resumed_cmp[key]))
                 for key, piece in DRIFT_PIECES.items() if drift and key in expected_cmp and key in resumed_cmp)
    logged = expected.get(LOSS)
    reference = {end - 1: float(logged)} if isinstance(logged, (int, float)) or hasattr(logged, "item") else {}
    losses = compare_losses(reference, trace.losses, start, atol, drift_atol)
    ctx = Context(recipe, ckpt, state, None, trace, reference, None, final, end, missing, False, seed, say)
    result = _finish(ctx, "checkpoints", ckpt, nxt, start, atol, drift_atol, losses, (), final, uncompared)
    return _replace(result, drift=rows, drift_note="drift at NEXT's step only") if drift else result


def _verify_run(recipe: Recipe, steps: int, resume_at: int, *, atol: float, drift_atol: float,
                via: str | None, converter: Callable[..., Any] | None, trust: bool,
                fresh_process: bool, workdir: str | None,
                seed: int, say: Callable[[str], None], worker: Worker | None,
                recorder: DriftRecorder | None = None) -> ResumeResult:
    final_atol = atol if steps == resume_at + 1 else drift_atol
    with ExitStack() as stack:
        if worker is not None:
            stack.callback(worker.close)
        process = stack.enter_context(FreshProcess(recipe, workdir, seed, worker)) if fresh_process else None
        place = TempPlace(stack, workdir)
        hand = _Handover(process, place, steps, trust) if process is not None else None
        reference_first: list[Fingerprint] = []
        say(f"uninterrupted run: {steps} steps, saving after step {resume_at}")
        # With --via the fresh process waits for the converted file; else it resumes from the saved one at once.
        reference = run_uninterrupted(recipe, steps, resume_at, place, seed,
                                      keep_first=hand.first if hand is not None else
                                      lambda live: reference_first.append(fingerprint(live)),
                                      on_saved=hand.start if hand is not None and via is None else None,
                                      on_step=recorder.keep if recorder is not None else None)
        path = place.file("resume.pt")
        if via is not None:
            assert converter is not None  # checked by verify_resume
            path = _via(path, via, str(place.dir), trust, converter)
        state = read_checkpoint(recipe, path, trust=trust)
        if hand is not None:
            say(f"resumed at step {resume_at} in a fresh process; waiting for it")
            fresh = hand.finish(path, reference)
            resumed, first_rows, first_state = fresh.trace, fresh.first_diffs, fresh.first_state
            final = fresh.final_diffs
            if recorder is not None and not recorder.note:
                say("replaying the resume in this process for the per-step drift")
                resume_in_process(recipe, read_checkpoint(recipe, path, trust=trust), path, steps, seed=seed,
                                  copy=False, on_step=recorder.compare)
                recorder.note = "per-step drift from a replay of the resume in this process"
        else:
            import copy

            # A second read: training changes the optimizer's tensors in place, and attribution reuses ``state``.
            check = FirstStepCheck(lambda: reference_first[0] if reference_first else None, copy.deepcopy)
            resumed = resume_in_process(recipe, read_checkpoint(recipe, path, trust=trust), path, steps, seed=seed,
                                        copy=False, keep_first=check,
                                        on_step=recorder.compare if recorder is not None else None)
            first_rows, first_state, final = check.rows, check.kept, None
        first = first_rows
        if first_state is not None:  # it differs: the reference's state again, to compare values
            first = compare_states(state_at(recipe, resume_at + 1, seed), first_state, atol)
        if final is None:
            final = compare_states(reference.final or {}, resumed.final or {}, final_atol)
    ref_losses = reference.losses
    losses = compare_losses(ref_losses, resumed.losses, resume_at, atol, drift_atol)
    ctx = Context(recipe, "checkpoint at step " + str(resume_at), state, lambda: state_at(recipe, resume_at, seed),
                  resumed, ref_losses, reference.final, final, steps, missing_pieces(recipe, state), False, seed, say)
    result = _finish(ctx, "run", "(temporary) resume.pt", None, resume_at, atol, drift_atol, losses, first, final)
    if recorder is not None:
        return _replace(result, via=via, fresh_process=fresh_process, drift=recorder.result(),
                        drift_note=recorder.note or "per-step drift from the resumed run")
    return _replace(result, via=via, fresh_process=fresh_process)



class _Handover:
    """Feeds the fresh process: the checkpoint once written, then the reference's fingerprints.

    The fresh process checks its state against them itself, so no tensor moves between the
    processes unless it differs.
    """

    def __init__(self, process: FreshProcess, place: TempPlace, steps: int, trust: bool) -> None:
        self.process, self.place, self.steps, self.trust = process, place, steps, trust
        self.started, self.first_print, self.first_sent = False, None, False

    def start(self, checkpoint: str) -> None:
        self.process.start(checkpoint, self.steps, trust=self.trust, outdir=str(self.place.dir))
        self.started = True
        if self.first_print is not None:
            self._send_first()

    def first(self, live: dict[str, Any]) -> None:
        self.first_print = fingerprint(live)
        if self.started:
            self._send_first()

    def _send_first(self) -> None:
        self.process.send_first(self.first_print)
        self.first_sent = True

    def finish(self, checkpoint: str, reference: RunTrace) -> FreshResume:
        if not self.started:
            self.start(checkpoint)
        if not self.first_sent:
            self._send_first()  # None: one resumed step, nothing to compare before the final state
        return self.process.finish(fingerprint(reference.final or {}), reference.losses, trust=self.trust)


def _via(path: str, via: str, tmp: str, trust: bool, convert_checkpoint: Callable[..., Any]) -> str:
    """Convert the checkpoint to ``via`` and back to .pth with ``convert``; resume from the result."""
    if via != "safetensors":
        raise UnsupportedError(f"--via {via}: only safetensors is supported")

    converted, back = str(Path(tmp) / "resume.safetensors"), str(Path(tmp) / "resume.roundtrip.pt")
    for src, dest, to in ((path, converted, "safetensors"), (converted, back, "pth")):
        result = convert_checkpoint(src, dest, to=to, trust=trust)
        if not result.ok:
            raise CorruptCheckpointError(f"{dest}: conversion to {to} changed the checkpoint "
                                         f"({result.mismatches[0]}); report it with the recipe")
    return back


def _classify(losses: tuple[LossRow, ...], first: tuple[TensorDiff, ...], final: tuple[TensorDiff, ...],
              start: int, end: int) -> tuple[Status, int | None]:
    candidates = [r.step for r in losses if r.status == "differs"]
    if worst(first) is not None:
        candidates.append(start)  # the state after the first resumed step already differs
    if worst(final) is not None:
        candidates.append(end - 1)
    if candidates:
        return "diverged", min(candidates)
    exact = all(r.status in ("identical", "before-resume", "resumed-only") for r in losses)
    exact = exact and all(d.status == "identical" for d in (*first, *final))
    return ("identical" if exact else "within_tolerance"), None


def _finish(ctx: Context, mode: Literal["checkpoints", "run"], ckpt: str, nxt: str | None, start: int,
            atol: float, drift_atol: float, losses: tuple[LossRow, ...], first: tuple[TensorDiff, ...],
            final: tuple[TensorDiff, ...], uncompared: str = "") -> ResumeResult:
    status, step = _classify(losses, first, final, start, ctx.end)
    ctx.diverged = status == "diverged"
    if ctx.diverged or ctx.missing:
        ctx.say("attribution: rerunning the resume with each piece of state changed")
    attributions, hints = attribute(ctx)
    verdict = _verdict(status, step, start, ctx.end, atol, drift_atol, first or final, attributions, hints)
    # an EMA model, a sampler's position, pieces NEXT lacks: "identical" says nothing about them
    for unchecked in (u for u in (_unchecked(ctx.file_state), uncompared) if u):
        if ctx.diverged:
            hints = (*hints, unchecked)
        else:
            verdict += "; " + unchecked
    return ResumeResult(mode, ctx.recipe.name, ckpt, nxt, start, ctx.end, atol, drift_atol, status, step, verdict,
                        losses, first, final, ctx.missing, attributions, hints)


def _unchecked(state: dict[str, Any]) -> str:
    """What the checkpoint holds beyond the recipe's layout, which is neither restored nor
    compared; empty when nothing."""
    extra = [str(k) for k in state if k not in (*COMPARED_KEYS, EPOCH, LOSS)]
    if not extra:
        return ""
    return (f"not checked: the checkpoint's {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} "
            "(outside the recipe's layout: the resume neither restores nor compares it)")


def _common_layout(recipe: Recipe, expected: dict[str, Any], resumed: dict[str, Any],
                   missing: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """NEXT's state and the resumed one, cut to what both hold, and what that leaves not compared
    ("" when nothing): a piece NEXT lacks, or a generator only one side's ``rng_state`` has (many
    loops save torch's alone; a ``cuda`` state is never restored on CPU). Pieces CKPT lacks too
    are named as missing already."""
    ours = {k: v for k, v in resumed.items() if k in expected}
    absent = [LABELS[p] for p in recipe.pieces()
              if PIECES[p] not in expected and PIECES[p] in resumed and p not in missing]
    theirs_rng, ours_rng = expected.get(PIECES["rng"]), ours.get(PIECES["rng"])
    if isinstance(theirs_rng, dict) and isinstance(ours_rng, dict):
        both = [k for k in theirs_rng if k in ours_rng]
        absent += [f"{k} RNG state" for k in ours_rng if k not in theirs_rng]
        extra = [k for k in theirs_rng if k not in ours_rng]
        expected = dict(expected, **{PIECES["rng"]: {k: theirs_rng[k] for k in both}})
        ours[PIECES["rng"]] = {k: ours_rng[k] for k in both}
    else:
        extra = []
    note = f"the next checkpoint has no {', '.join(absent)}" if absent else ""
    if extra:
        note += ("; " if note else "") + f"its {', '.join(extra)} RNG state is not one the resume restores"
    return expected, ours, f"not compared: {note}, so only what both hold was compared" if note else ""


def _verdict(status: Status, step: int | None, start: int, end: int, atol: float, drift_atol: float,
             diffs: tuple[TensorDiff, ...], attributions: tuple[Attribution, ...], hints: tuple[str, ...]) -> str:
    if status == "identical":
        text = f"bitwise identical: resuming after step {start} reproduces steps {start}..{end - 1}"
    elif status == "within_tolerance":
        text = f"within tolerance: first resumed step within --atol {atol:g}, later steps within --drift-atol {drift_atol:g}"
    else:
        text = f"diverged at step {step}"
        reasons = [a.note for a in attributions if a.explains]
        if not reasons:
            bad = worst(diffs)
            if bad is not None:
                size = f" (max abs {bad.max_abs:.1e})" if bad.max_abs is not None else ""
                reasons.append(f"first differing state: {bad.key}{size}")
            reasons.extend(hints[:1])
        text += ": " + "; ".join(reasons) if reasons else ""
    if status != "diverged":
        harmless = [LABELS[a.piece] for a in attributions if not a.in_checkpoint]
        if harmless:
            text += f"; the checkpoint has no {', '.join(harmless)} (it made no difference here)"
    return text


def _replace(result: ResumeResult, **changes: Any) -> ResumeResult:
    import dataclasses

    return dataclasses.replace(result, **changes)


__all__ = ["ResumeResult", "verify_resume", "RunTrace"]
