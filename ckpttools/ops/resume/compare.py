"""Comparing training states and per-step losses for ``verify-resume``.

States are in the default checkpoint layout. They are flattened to dotted keys (``model_state_dict.fc.weight``,
``optimizer_state_dict.state.0.exp_avg``, ``rng_state.torch``) and compared leaf by leaf: tensors
bitwise or by max abs diff, scalars by equality or abs diff.

A state can also be reduced to a fingerprint: per leaf, what an identical comparison reports plus
a CRC-32 of the tensor's bytes (the repr of a scalar). Two runs compare fingerprints first and
keep or move the tensors' values only when a fingerprint differs; CRC-32 lets a difference
through with probability 2**-32 per leaf, and the per-step losses are compared exactly besides.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

DiffStatus = Literal["identical", "close", "differs", "missing", "extra", "mismatch"]
# Leaves compared as one value: python's RNG state is a tuple of 625 ints.
ATOMIC_KEYS = ("rng_state.python",)
# The logged loss is compared per step, not as part of the state.
SKIPPED_KEYS = ("loss",)


@dataclass(frozen=True)
class TensorDiff:
    """One leaf of the state, expected (uninterrupted run or NEXT) against the resumed run.

    Attributes:
        key: dotted key.
        status: identical (bitwise), close (within tolerance), differs, missing (only in expected),
            extra (only in resumed), mismatch (shape, dtype or type differs).
        max_abs: max abs difference for numbers and float tensors, else None.
        detail: dtype and shape, or the two values for scalars.
    """

    key: str
    status: DiffStatus
    max_abs: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "close")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "status": self.status, "max_abs": self.max_abs, "detail": self.detail}


@dataclass(frozen=True)
class LossRow:
    """The loss of one step: uninterrupted run (or NEXT's logged loss) against the resumed run."""

    step: int
    reference: float | None
    resumed: float | None
    diff: float | None
    status: Literal["identical", "close", "differs", "resumed-only", "before-resume"]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "reference": self.reference, "resumed": self.resumed,
                "diff": self.diff, "status": self.status}


def flatten_state(state: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted key, leaf)``; numpy arrays become tensors."""
    if prefix in ATOMIC_KEYS:
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            if not prefix and k in SKIPPED_KEYS:
                continue
            yield from flatten_state(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from flatten_state(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, _from_numpy(state)


def _from_numpy(value: Any) -> Any:
    if type(value).__module__ == "numpy":
        import torch

        if hasattr(value, "shape") and value.shape != ():
            return torch.from_numpy(value)
        return value.item()
    return value


def compare_states(expected: dict[str, Any], resumed: dict[str, Any], atol: float) -> tuple[TensorDiff, ...]:
    """Compare two states leaf by leaf, in ``expected``'s key order, extras last."""
    left = dict(flatten_state(expected))
    right = dict(flatten_state(resumed))
    out = [compare_leaf(key, value, right[key], atol) if key in right else TensorDiff(key, "missing")
           for key, value in left.items()]
    out.extend(TensorDiff(key, "extra") for key in right if key not in left)
    return tuple(out)


def compare_leaf(key: str, a: Any, b: Any, atol: float) -> TensorDiff:
    """Compare one leaf: tensors bitwise then by max abs diff; numbers by value; the rest by ``==``."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return TensorDiff(key, "mismatch", None, f"{type(a).__name__} vs {type(b).__name__}")
        return _compare_tensors(key, a, b, atol)
    if _is_number(a) and _is_number(b):
        return _compare_numbers(key, a, b, atol)
    if a == b:
        return _identical(key, a)
    return TensorDiff(key, "differs", None, f"{_short(a)} vs {_short(b)}")


def _identical(key: str, value: Any) -> TensorDiff:
    """What comparing ``value`` with an identical one reports."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return TensorDiff(key, "identical", 0.0, _tensor_detail(value))
    if _is_number(value):
        return TensorDiff(key, "identical", 0.0, _short(value))
    return TensorDiff(key, "identical", None, _short(value))


def _tensor_detail(t: Any) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def _compare_tensors(key: str, a: Any, b: Any, atol: float) -> TensorDiff:
    import torch

    detail = _tensor_detail(a)
    if a.dtype != b.dtype or a.shape != b.shape:
        return TensorDiff(key, "mismatch", None, f"{detail} vs {_tensor_detail(b)}")
    if torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                             and torch.equal(a.nan_to_num(), b.nan_to_num())):
        return _identical(key, a)
    if a.dtype == torch.uint8:
        # raw bytes (RNG state): a size of difference means nothing
        return TensorDiff(key, "differs", None, detail)
    diff = (a.double() - b.double()).abs()
    worst = float(diff.nan_to_num(nan=math.inf).max()) if diff.numel() else 0.0
    if not (a.is_floating_point() or a.is_complex()):
        # unequal integers (seeds, steps, ids) differ by 1 at least: float64 rounds them past
        # 2**53, where 2**62 and 2**62 + 1 would read as no difference
        worst = max(worst, 1.0)
    return TensorDiff(key, "close" if worst <= atol else "differs", worst, detail)


def _compare_numbers(key: str, a: float, b: float, atol: float) -> TensorDiff:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return _identical(key, a)
    # Python ints subtract exactly; float() first would round them past 2**53
    worst = float(abs(a - b)) if isinstance(a, int) and isinstance(b, int) else abs(float(a) - float(b))
    return TensorDiff(key, "close" if worst <= atol else "differs", worst, f"{_short(a)} vs {_short(b)}")


Fingerprint = dict[str, tuple[str | None, float | None, str]]


def fingerprint(state: dict[str, Any]) -> Fingerprint:
    """Per leaf of ``state``: (digest, max_abs, detail), where max_abs and detail are what an
    identical comparison reports. JSON-ready (tuples come back as lists). The digest is None for a
    tensor whose bytes cannot be read (sparse, quantized): it never matches."""
    out: Fingerprint = {}
    for key, value in flatten_state(state):
        row = _identical(key, value)
        out[key] = (_digest(value), row.max_abs, row.detail)
    return out


def _digest(value: Any) -> str | None:
    if not (hasattr(value, "dtype") and hasattr(value, "shape")):
        return "repr:" + repr(value)
    import torch

    try:
        data = value.detach().reshape(-1).contiguous().view(torch.uint8).numpy()
    except (RuntimeError, TypeError):
        return None
    return f"crc32:{zlib.crc32(data):08x}"


def match_fingerprints(expected: Fingerprint, resumed: Fingerprint) -> tuple[TensorDiff, ...] | None:
    """The identical rows when every leaf's digest matches, else None: the values must be compared."""
    if list(expected) != list(resumed):
        return None
    rows = []
    for key, (digest, max_abs, detail) in expected.items():
        other = resumed[key]
        if digest is None or digest != other[0] or detail != other[2]:
            return None
        rows.append(TensorDiff(key, "identical", max_abs, detail))
    return tuple(rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def compare_losses(reference: dict[int, float], resumed: dict[int, float], first_step: int,
                   atol: float, drift_atol: float) -> tuple[LossRow, ...]:
    """One row per step: the first resumed step against ``atol``, later ones against ``drift_atol``."""
    rows = []
    for step in sorted(set(reference) | set(resumed)):
        ref, res = reference.get(step), resumed.get(step)
        if res is None:
            rows.append(LossRow(step, ref, None, None, "before-resume"))
        elif ref is None:
            rows.append(LossRow(step, None, res, None, "resumed-only"))
        else:
            tol = atol if step == first_step else drift_atol
            same = ref == res or (math.isnan(ref) and math.isnan(res))
            diff = 0.0 if same else abs(ref - res) if math.isfinite(ref - res) else math.inf
            status = "identical" if diff == 0.0 else "close" if diff <= tol else "differs"
            rows.append(LossRow(step, ref, res, diff, status))  # type: ignore[arg-type]
    return tuple(rows)


def worst(diffs: tuple[TensorDiff, ...]) -> TensorDiff | None:
    """The first leaf that is not within tolerance, or None."""
    return next((d for d in diffs if not d.ok), None)


def max_loss_change(a: dict[int, float], b: dict[int, float]) -> tuple[float, int | None]:
    """Largest abs difference between two runs' losses, and the first step where they part."""
    biggest, first = 0.0, None
    for step in sorted(set(a) & set(b)):
        if a[step] != b[step]:
            first = step if first is None else first
            biggest = max(biggest, abs(a[step] - b[step]))
    return biggest, first


def states_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two states are bitwise identical (model, optimizer, scheduler, scaler, RNG)."""
    return all(d.status == "identical" for d in compare_states(a, b, 0.0))
