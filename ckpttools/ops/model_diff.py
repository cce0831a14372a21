"""``diff PATH --model SPEC``: will this checkpoint load into this model, and if not, why.

The comparison reads checkpoint metadata only and the model's signature (built on the meta
device), so it costs no tensor memory on either side. Systematic differences (a prefix, a
nested state_dict, renamed modules) are named with the fix that removes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpttools.formats.base import CheckpointReader
from ckpttools.ops.model_spec import ModelSignature, signature_of_model
from ckpttools.ops.fix_plan import Fix, propose_fixes
from ckpttools.ops.comparison import Comparison, DtypeDifference, Shape, ShapeMismatch, compare_keys
from ckpttools.ops.keymatch import KeyMapping
from ckpttools.ops.state_dict import (
    StateDictView,
    as_reader,
    find_state_dict,
    state_dict_candidates,
)
from ckpttools.units import plural

if TYPE_CHECKING:
    from torch import nn

# Below this share of the model's parameters, a strict=False load is all but a fresh model.
COVERAGE_WARNING = 0.5


@dataclass(frozen=True)
class DiffResult:
    """A checkpoint compared with a model.

    Attributes:
        checkpoint: the checkpoint path as given.
        model: the model spec or signature file.
        state_dict: where the state_dict sits in the checkpoint (``""`` at the top level).
        state_dict_note: one line saying which part of the checkpoint was used.
        checkpoint_keys / checkpoint_dtypes: every state_dict key of the checkpoint.
        model_keys / model_dtypes / model_kinds: every key the model expects (kind is
            ``parameter`` or ``buffer``).
        comparison: matched / missing / unexpected / shape mismatches / dtype differences / tied.
        non_persistent: the model's non-persistent buffers (never missing).
        loaded_params / total_params: parameter elements a ``strict=False`` load would fill,
            and the model's total (tied parameters counted once).
        fixes: named systematic differences, each with its result, Python line and command.
        mapping: the inferred key mapping, when prefixes did not explain the difference.
    """

    checkpoint: str
    model: str
    state_dict: str
    state_dict_note: str
    checkpoint_keys: dict[str, Shape]
    checkpoint_dtypes: dict[str, str]
    model_keys: dict[str, Shape]
    model_dtypes: dict[str, str]
    model_kinds: dict[str, str]
    comparison: Comparison
    non_persistent: tuple[str, ...] = ()
    loaded_params: int = 0
    total_params: int = 0
    fixes: tuple[Fix, ...] = ()
    mapping: KeyMapping | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def missing(self) -> tuple[str, ...]:
        return self.comparison.missing

    @property
    def unexpected(self) -> tuple[str, ...]:
        return self.comparison.unexpected

    @property
    def mismatched(self) -> tuple[tuple[str, Shape, Shape], ...]:
        """``(key, checkpoint shape, model shape)`` for each shape mismatch."""
        return tuple((m.key, m.checkpoint_shape, m.model_shape)
                     for m in self.comparison.shape_mismatches)

    @property
    def ok(self) -> bool:
        """Whether ``model.load_state_dict(state_dict, strict=True)`` would succeed."""
        return self.comparison.problems == 0

    @property
    def coverage(self) -> float:
        """Share of the model's parameter elements a ``strict=False`` load would fill."""
        return self.loaded_params / self.total_params if self.total_params else 1.0

    @property
    def verdict(self) -> str:
        c = self.comparison
        if self.ok:
            return f"strict load would succeed: {plural(len(c.matched), 'key')} match{'es' if len(c.matched) == 1 else ''}"
        parts = [f"{len(c.missing)} missing", f"{len(c.unexpected)} unexpected",
                 f"{len(c.shape_mismatches)} shape mismatches"]
        return f"strict load would fail: {', '.join(parts)} ({plural(len(c.matched), 'key')} match{'es' if len(c.matched) == 1 else ''})"

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "ok": self.ok, "verdict": self.verdict, "checkpoint": self.checkpoint,
            "model": self.model, "state_dict": self.state_dict,
            "state_dict_note": self.state_dict_note,
            "counts": {"matched": len(c.matched), "missing": len(c.missing),
                       "unexpected": len(c.unexpected),
                       "shape_mismatches": len(c.shape_mismatches),
                       "dtype_differences": len(c.dtype_differences), "tied": len(c.tied)},
            "coverage": round(self.coverage, 6), "loaded_params": self.loaded_params,
            "total_params": self.total_params,
            "missing": [{"key": k, "shape": list(self.model_keys[k]),
                         "kind": self.model_kinds[k]} for k in c.missing],
            "unexpected": [{"key": k, "shape": list(self.checkpoint_keys[k])}
                           for k in c.unexpected],
            "shape_mismatches": [{"key": m.key, "checkpoint_shape": list(m.checkpoint_shape),
                                  "model_shape": list(m.model_shape)}
                                 for m in c.shape_mismatches],
            "dtype_differences": [{"key": d.key, "checkpoint_dtype": d.checkpoint_dtype,
                                   "model_dtype": d.model_dtype} for d in c.dtype_differences],
            "tied": [{"key": a, "loaded_through": b} for a, b in c.tied],
            "non_persistent_buffers": list(self.non_persistent),
            "fixes": [f.to_dict() for f in self.fixes],
            "mapping": self.mapping.to_dict() if self.mapping else None,
            "warnings": list(self.warnings),
        }


def _coverage(cmp: Comparison, sig: ModelSignature) -> tuple[int, int]:
    loaded = set(cmp.matched) | {a for a, _ in cmp.tied}
    alias = {k for g in sig.ties for k in g[1:]}
    params = [k for k in sig.keys if k.kind == "parameter" and k.key not in alias]
    return sum(k.numel for k in params if k.key in loaded), sum(k.numel for k in params)


def _pick_view(views: list[StateDictView], sig: ModelSignature) -> StateDictView:
    """The candidate state_dict that matches the model best (the found one on ties)."""
    def score(v: StateDictView) -> int:
        ckpt = {e.key: (e.shape, e.dtype) for e in v.entries}
        return len(compare_keys(ckpt, sig).matched)

    best = views[0]
    for v in views[1:]:
        if score(v) > score(best):
            best = v
    return best


def diff_against_model(source: CheckpointReader | Mapping[str, Any],
                       model: nn.Module | ModelSignature, *, key: str | None = None,
                       model_name: str = "") -> DiffResult:
    """Compare a checkpoint's state_dict with what a model's ``load_state_dict`` expects.

    Args:
        source: an open checkpoint, or an in-memory state_dict / training checkpoint dict.
        model: an ``nn.Module`` (ideally on the meta device) or a ``ModelSignature``.
        key: dotted path of the state_dict; found by name when omitted.
        model_name: how to name the model in the report.

    Returns:
        The comparison, verdict, coverage and named fixes; no tensor data is read.

    Raises:
        CkptError: ``key`` is not in the checkpoint.

    Example:
        >>> with ckpttools.open_checkpoint("model.pth") as ckpt:
        ...     result = ckpttools.diff_against_model(ckpt, build_model("mypkg:Net"))
        >>> result.verdict
        'strict load would fail: 0 missing, 2 unexpected, 0 shape mismatches (120 keys match)'
    """
    reader = as_reader(source)
    sig = model if isinstance(model, ModelSignature) else signature_of_model(model, model_name)
    views = [find_state_dict(reader, key)] if key is not None else state_dict_candidates(reader)
    view = _pick_view(views, sig)
    ckpt = {e.key: (e.shape, e.dtype) for e in view.entries}
    cmp = compare_keys(ckpt, sig)
    loaded, total = _coverage(cmp, sig)
    fixes, mapping = propose_fixes(reader.path, view, ckpt, sig, cmp, compare_keys)
    warns = []
    if total and loaded / total < COVERAGE_WARNING and cmp.problems:
        warns.append(f"strict=False would load only {100 * loaded / total:.0f}% of the model's "
                     "parameters; the rest keep their initialisation")
    return DiffResult(
        checkpoint=reader.path, model=model_name or sig.name, state_dict=view.prefix,
        state_dict_note=view.describe(),
        checkpoint_keys={k: tuple(s) for k, (s, _) in ckpt.items()},
        checkpoint_dtypes={k: d for k, (_, d) in ckpt.items()},
        model_keys={k.key: k.shape for k in sig.keys},
        model_dtypes={k.key: k.dtype for k in sig.keys},
        model_kinds={k.key: k.kind for k in sig.keys}, comparison=cmp,
        non_persistent=sig.non_persistent, loaded_params=loaded, total_params=total,
        fixes=tuple(fixes), mapping=mapping, warnings=tuple(warns))
