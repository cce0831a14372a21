"""Attribution for ``verify-resume``: which piece of state explains a difference.

The resume is rerun in this process with one piece of state changed at a time: a piece the
checkpoint lacks is restored from the uninterrupted run (when there is one) or, for RNG,
started from another seed; a piece it carries is reset to fresh. When the checkpoint carries
everything and the run still differs, the resume is repeated to see whether it is
nondeterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckpttools.ops.resume.recipe import DEFAULT_SEED, OPTIMIZER, PIECES, SCALER, SCHEDULER, Recipe, _call
from ckpttools.ops.resume.compare import TensorDiff, max_loss_change, states_equal
from ckpttools.ops.resume.run import RunTrace, resume_in_process

NONDETERMINISM_HINT = ("set torch.use_deterministic_algorithms(True), torch.backends.cudnn.benchmark = False "
                       "and CUBLAS_WORKSPACE_CONFIG=:4096:8 before training")
LABELS = {"optimizer": "optimizer state", "scheduler": "scheduler state", "scaler": "GradScaler state",
          "rng": "RNG state"}


@dataclass(frozen=True)
class Attribution:
    """What one piece of state does to the resumed run.

    Attributes:
        piece: ``optimizer``, ``scheduler``, ``scaler`` or ``rng``.
        in_checkpoint: whether the checkpoint carries it.
        matters: whether changing it changes the resumed run (None: could not tell).
        explains: whether it accounts for the divergence (a missing piece that, restored, fixes it).
        loss_change: the largest loss change it causes, when measured.
        first_step: the first step whose loss it changes, when measured.
        note: one sentence for the user.
    """

    piece: str
    in_checkpoint: bool
    matters: bool | None
    explains: bool
    loss_change: float | None
    first_step: int | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"piece": self.piece, "in_checkpoint": self.in_checkpoint, "matters": self.matters,
                "explains": self.explains, "loss_change": self.loss_change, "first_step": self.first_step,
                "note": self.note}


@dataclass
class Context:
    """What attribution works from."""

    recipe: Recipe
    where: str
    file_state: dict[str, Any]  # what the checkpoint holds
    full_state_fn: Callable[[], dict[str, Any]] | None  # the uninterrupted run's complete state at the resume
    resumed: RunTrace
    reference_losses: dict[int, float]
    reference_final: dict[str, Any] | None
    diffs: tuple[TensorDiff, ...]
    end: int
    missing: tuple[str, ...]
    diverged: bool
    seed: int = DEFAULT_SEED
    say: Callable[[str], None] = lambda _: None  # noqa: E731 - progress lines
    _full: dict[str, Any] | None = field(default=None, repr=False)

    def full_state(self) -> dict[str, Any] | None:
        """The uninterrupted run's state at the resume step, computed once (None: no such run)."""
        if self._full is None and self.full_state_fn is not None:
            self._full = self.full_state_fn()
        return self._full


def attribute(ctx: Context) -> tuple[tuple[Attribution, ...], tuple[str, ...]]:
    """Attribute the resumed run's differences to pieces of state.

    Returns:
        One attribution per piece the recipe has (missing pieces first), and hints.
    """
    if not ctx.diverged and not ctx.missing:
        return (), ()
    out = [_missing(ctx, p) for p in ctx.missing]
    if ctx.diverged:
        out += [_present(ctx, p) for p in ctx.recipe.pieces() if p not in ctx.missing]
    hints: tuple[str, ...] = ()
    if ctx.diverged and not any(a.explains for a in out):
        hints = _together(ctx) or _unexplained(ctx)
    return tuple(out), hints


def _together(ctx: Context) -> tuple[str, ...]:
    """Rerun with every missing piece restored at once: pieces needed together (a scheduler and
    the RNG state) each fail to fix the resume alone."""
    full = ctx.full_state()
    pieces = [p for p in ctx.missing if full is not None and full.get(PIECES[p]) is not None]
    if full is None or len(pieces) < 2:
        return ()
    state = dict(ctx.file_state)
    state.update({PIECES[p]: full[PIECES[p]] for p in pieces})
    if not _matches_reference(ctx, _rerun(ctx, state)):
        return ()
    labels = " and ".join(LABELS[p] for p in pieces)
    return (f"the checkpoint has no {labels}; restored together they make the resume match "
            "(none of them alone does)",)


def _rerun(ctx: Context, state: dict[str, Any], reset: frozenset[str] = frozenset(),
           seed: int | None = None) -> RunTrace:
    return resume_in_process(ctx.recipe, state, ctx.where, ctx.end, reset,
                             ctx.seed if seed is None else seed)


def _missing(ctx: Context, piece: str) -> Attribution:
    label = LABELS[piece]
    if not ctx.diverged:
        return Attribution(piece, False, False, False, 0.0, None,
                           f"the checkpoint has no {label}; the resume matched anyway ({_why_harmless(ctx, piece)})")
    full = ctx.full_state()
    if full is not None and full.get(PIECES[piece]) is not None:
        return _restore(ctx, piece, full)
    if piece == "rng":
        return _rng_sensitivity(ctx)
    matters = _stateful_hint(ctx, piece)
    note = f"the checkpoint has no {label}{_uses(ctx, piece)}; the resume started it fresh"
    if matters:
        note += f" and the {piece} state of the next checkpoint differs from the resumed one"
    return Attribution(piece, False, matters, bool(matters), None, None, note)


def _restore(ctx: Context, piece: str, full: dict[str, Any]) -> Attribution:
    """Rerun with the missing piece taken from the uninterrupted run."""
    state = dict(ctx.file_state)
    state[PIECES[piece]] = full[PIECES[piece]]
    trace = _rerun(ctx, state)
    change, first = max_loss_change(ctx.resumed.losses, trace.losses)
    fixes = _matches_reference(ctx, trace)
    rng_only = change == 0 and states_equal(_no_rng(trace.final), _no_rng(ctx.resumed.final))
    matters = not rng_only or not states_equal(trace.final or {}, ctx.resumed.final or {})
    note = f"the checkpoint has no {LABELS[piece]}"
    note += _uses(ctx, piece)
    if matters and first is not None:
        note += f"; the resumed loss differs from step {first} by {change:.1e}"
    elif matters and rng_only:
        note += ("; losses and weights match, but the RNG state after the resume is not the uninterrupted "
                 "run's, so anything random later (dropout, shuffling) would differ")
    elif matters:
        note += "; it changes the resumed state"
    if matters:
        note += "; restoring it makes the resume match" if fixes else "; restoring it alone does not make it match"
    else:
        note += "; restoring it changes nothing"
    return Attribution(piece, False, matters, fixes and matters, change, first, note)


def _matches_reference(ctx: Context, trace: RunTrace) -> bool:
    losses = {s: v for s, v in ctx.reference_losses.items() if s in trace.losses}
    if losses != trace.losses:
        return False
    return ctx.reference_final is None or states_equal(ctx.reference_final, trace.final or {})


def _rng_sensitivity(ctx: Context) -> Attribution:
    trace = _rerun(ctx, ctx.file_state, seed=ctx.seed + 1)
    change, first = max_loss_change(ctx.resumed.losses, trace.losses)
    matters = change > 0 or not states_equal(_no_rng(trace.final), _no_rng(ctx.resumed.final))
    note = "the checkpoint has no RNG state" + _uses(ctx, "rng")
    if matters and first is not None:
        note += f"; another seed changes the resumed loss from step {first} by {change:.1e}"
    elif matters:
        note += "; another seed changes the resumed state"
    else:
        note += "; another seed changes nothing, so the missing RNG state does not explain it"
    return Attribution("rng", False, matters, matters, change, first, note)


def _present(ctx: Context, piece: str) -> Attribution:
    """Rerun with a piece the checkpoint carries reset to fresh: does the resume depend on it?"""
    trace = _rerun(ctx, ctx.file_state, frozenset({piece}))
    change, first = max_loss_change(ctx.resumed.losses, trace.losses)
    matters = change > 0 or not states_equal(_no_rng(trace.final), _no_rng(ctx.resumed.final))
    note = f"the checkpoint carries the {LABELS[piece]}"
    if matters and first is None:  # one resumed step: its loss comes before the optimizer step
        note += "; resetting it changes the resumed state (not the loss of these steps), so it is loaded and used"
    else:
        note += (f"; resetting it changes the loss by {change:.1e}, so it is loaded and used" if matters
                 else "; resetting it changes nothing")
    return Attribution(piece, True, matters, False, change, first, note)


def _unexplained(ctx: Context) -> tuple[str, ...]:
    again = _rerun(ctx, ctx.file_state)
    if again.losses != ctx.resumed.losses or not states_equal(again.final or {}, ctx.resumed.final or {}):
        return ("two resumes from the same checkpoint differ: nondeterministic kernels are in play; "
                + NONDETERMINISM_HINT,)
    import torch

    hints = ["the resume is repeatable, so the difference comes from state outside the checkpoint "
             "(module globals, data order, a cache) or from a step that is not the recipe's"]
    if not torch.are_deterministic_algorithms_enabled():
        hints.append("deterministic algorithms are off; if the run used a GPU, " + NONDETERMINISM_HINT)
    return tuple(hints)


def _no_rng(state: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (state or {}).items() if k != PIECES["rng"]}


def _uses(ctx: Context, piece: str) -> str:
    """What in the recipe makes the piece matter, as a clause."""
    if piece == "rng":
        dropout = _dropout_modules(ctx)
        return f"; the model uses dropout (modules {', '.join(dropout[:3])})" if dropout else ""
    if piece == "optimizer":
        kinds = _optimizer_state_kinds(ctx)
        return f"; the optimizer keeps {', '.join(kinds)}" if kinds else ""
    return ""


def _dropout_modules(ctx: Context) -> list[str]:
    from torch import nn

    model = _call(ctx.recipe, "build_model")
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
    return [name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds)]


def _optimizer_state_kinds(ctx: Context) -> list[str]:
    state = ((ctx.resumed.final or {}).get(OPTIMIZER) or {}).get("state") or {}
    names = sorted({k for per_param in state.values() for k in per_param})
    return names


def _stateful_hint(ctx: Context, piece: str) -> bool | None:
    """Without the uninterrupted run: does the next checkpoint's copy of the piece disagree?"""
    prefix = {"optimizer": OPTIMIZER, "scheduler": SCHEDULER, "scaler": SCALER}[piece] + "."
    relevant = [d for d in ctx.diffs if d.key.startswith(prefix)]
    if not relevant:
        return None
    return any(not d.ok for d in relevant)


def _why_harmless(ctx: Context, piece: str) -> str:
    if piece == "optimizer" and not _optimizer_state_kinds(ctx):
        return "the optimizer keeps no per-parameter state here"
    if piece == "rng" and not _dropout_modules(ctx):
        return "nothing after the checkpoint draws random numbers"
    return "it made no difference over these steps"
