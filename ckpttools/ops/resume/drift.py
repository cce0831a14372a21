"""Per-step drift of each piece of state: how far the resumed run is from the uninterrupted one.

The uninterrupted run keeps a copy of its state after every step past the resume point (within a
memory budget); the resumed run compares its live state with that copy after each of its steps,
piece by piece (model, optimizer, scheduler, scaler), as the largest absolute difference over
the piece's float tensors and numbers. RNG state is bytes, where a size of difference means
nothing, so it has no curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ckpttools.ops.resume.compare import flatten_state
from ckpttools.ops.resume.recipe import MODEL, OPTIMIZER, SCALER, SCHEDULER
from ckpttools.units import human_bytes

DRIFT_PIECES = {MODEL: "model", OPTIMIZER: "optimizer", SCHEDULER: "scheduler", SCALER: "scaler"}
# Copies of the reference's state kept for the drift curve; a longer or larger run goes without it.
BUDGET_BYTES = 512 << 20


@dataclass(frozen=True)
class DriftRow:
    """One piece of state after one step: max abs difference, resumed against reference."""

    step: int  # completed steps (the state after step ``step - 1`` ran)
    piece: str  # model, optimizer, scheduler, scaler
    max_abs: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "piece": self.piece, "max_abs": self.max_abs}


class DriftRecorder:
    """An ``on_step`` for both runs: the reference's copies, then the resumed run's rows.

    Args:
        after: the resume step; only states after it are kept.
        steps: the run length, for the memory budget.
    """

    def __init__(self, after: int, steps: int) -> None:
        self.after, self.steps = after, steps
        self.reference: dict[int, dict[str, Any]] = {}
        self.rows: list[DriftRow] = []
        self.note = ""

    def keep(self, step: int, live: dict[str, Any]) -> None:
        """The reference run's state after ``step`` completed steps (copied)."""
        import copy

        if step <= self.after or self.note:
            return
        pieces = {k: v for k, v in live.items() if k in DRIFT_PIECES}
        size = _nbytes(pieces)
        if size * (self.steps - self.after) > BUDGET_BYTES:
            self.reference.clear()
            self.note = (f"no per-step drift: {self.steps - self.after} copies of "
                         f"{human_bytes(size)} of state exceed {human_bytes(BUDGET_BYTES)}")
            return
        self.reference[step] = copy.deepcopy(pieces)

    def compare(self, step: int, live: dict[str, Any]) -> None:
        """The resumed run's state after ``step`` completed steps, against the kept copy."""
        expected = self.reference.get(step)
        if expected is None:
            return
        for key, piece in DRIFT_PIECES.items():
            if key in expected and key in live:
                self.rows.append(DriftRow(step, piece, max_abs_difference(expected[key], live[key])))

    def result(self) -> tuple[DriftRow, ...]:
        return tuple(self.rows)


def max_abs_difference(expected: Any, resumed: Any) -> float:
    """Largest abs difference over the float tensors and numbers two states share (NaN on one
    side only, or a shape that changed, counts as infinite)."""
    import torch

    right = dict(flatten_state(resumed))
    top = 0.0
    for key, a in flatten_state(expected):
        b = right.get(key)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape:
                return math.inf
            if not a.is_floating_point() or a.numel() == 0:
                continue
            d = (a.double() - b.double()).abs()
            d = torch.where(a.isnan() & b.isnan(), 0.0, d.nan_to_num(nan=math.inf))
            top = max(top, float(d.max()))
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            same = a == b or (math.isnan(a) and math.isnan(b))
            top = max(top, 0.0 if same else abs(float(a) - float(b)) if math.isfinite(a - b) else math.inf)
    return top


def _nbytes(state: Any) -> int:
    return sum(v.numel() * v.element_size() for _, v in flatten_state(state) if hasattr(v, "element_size"))
