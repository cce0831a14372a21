"""``diff PATH --model SPEC``: will this checkpoint load into this model, and if not, the fix.

The comparison reads checkpoint metadata and the model's signature (built on the meta device);
tensor data is read only where the model ties parameters that the checkpoint holds under two
names, to tell whether one load keeps them both. The fix is one plan
(:mod:`ckpttools.ops.fix_plan`) proven against the model before it is shown; ``diagnose
--checkpoint`` uses the same plan.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpttools.entries import ObjectEntry
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.ops.comparison import Comparison, Shape, compare_keys
from ckpttools.ops.fix_plan import Counts, FixPlan, Source, find_plan
from ckpttools.ops.frameworks import ModelTraits, detect_traits
from ckpttools.ops.model_spec import EXTRA_STATE, ModelSignature, signature_of_model
from ckpttools.ops.plan_text import render_plan
from ckpttools.ops.state_dict import StateDictView, as_reader, find_state_dict, state_dict_candidates
from ckpttools.units import plural

if TYPE_CHECKING:
    from torch import nn

# Below this share of the model's parameters, a strict=False load is all but a fresh model.
COVERAGE_WARNING = 0.5
TIED_NOTE = ("the checkpoint leaves out tied aliases, so load_state_dict(strict=True) fails; "
             "from_pretrained re-ties them (--allow-tied accepts them)")


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
        plan: the fix plan, proven against the model (no steps when nothing needs fixing).
        allow_tied: absent tied aliases count as loadable (``--allow-tied``).
        tie_conflicts: groups of keys the model ties into one parameter that the checkpoint holds
            as different tensors; the load keeps the last key's values for all of them.
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
    plan: FixPlan | None = None
    allow_tied: bool = False
    warnings: tuple[str, ...] = field(default=())
    tie_conflicts: tuple[tuple[str, ...], ...] = ()

    @property
    def fixes(self) -> tuple[FixPlan, ...]:
        """The plan, as a one-item tuple when it has steps (empty otherwise)."""
        return (self.plan,) if self.plan is not None and self.plan.steps else ()

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
        """Whether ``model.load_state_dict(state_dict, strict=True)`` would succeed on the
        state_dict as found (absent tied aliases fail it unless ``allow_tied``) and keep every
        tensor of it (not so when the model ties parameters the checkpoint holds apart)."""
        return Counts.of(self.comparison).loads_strictly(self.allow_tied) and not self.tie_conflicts

    @property
    def coverage(self) -> float:
        """Share of the model's parameter elements a ``strict=False`` load would fill."""
        return self.loaded_params / self.total_params if self.total_params else 1.0

    @property
    def verdict(self) -> str:
        c = self.comparison
        if self.tie_conflicts and Counts.of(c).loads_strictly(self.allow_tied):
            group = self.tie_conflicts[0]
            return (f"strict load would succeed but lose weights: the model ties {' and '.join(group)} "
                    f"(one parameter), the checkpoint holds them as different tensors, and the load "
                    f"keeps {group[-1]} for all of them")
        if self.ok:
            tied = f", {plural(len(c.tied), 'tied alias', 'tied aliases')} absent (allowed)" if c.tied else ""
            return f"strict load would succeed: {plural(len(c.matched), 'key')} match{'es' if len(c.matched) == 1 else ''}{tied}"
        return (f"strict load would fail: {Counts.of(c).text} "
                f"({plural(len(c.matched), 'key')} match{'es' if len(c.matched) == 1 else ''})")

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
            "tie_conflicts": [list(g) for g in self.tie_conflicts],
            "non_persistent_buffers": list(self.non_persistent),
            "plan": self.plan.to_dict() if self.plan else None,
            "warnings": list(self.warnings),
        }


def _coverage(cmp: Comparison, sig: ModelSignature) -> tuple[int, int]:
    """Parameter elements a ``strict=False`` load fills, and the total; a shape mismatch makes
    that load raise, so it fills nothing."""
    alias = {k for g in sig.ties for k in g[1:]}
    params = [k for k in sig.keys if k.kind == "parameter" and k.key not in alias]
    total = sum(k.numel for k in params)
    if cmp.shape_mismatches:
        return 0, total
    loaded = set(cmp.matched) | {a for a, _ in cmp.tied}
    return sum(k.numel for k in params if k.key in loaded), total


def _tie_conflicts(reader: CheckpointReader, view: StateDictView, ckpt: Mapping[str, tuple[Shape, str]],
                   sig: ModelSignature) -> tuple[tuple[str, ...], ...]:
    """The model's tied groups that the checkpoint holds under two or more names with different
    values. ``load_state_dict`` copies each key into the one shared parameter in module order, so
    the last one wins and the others are lost."""
    out = []
    for group in sig.ties:
        present = [k for k in group if k in ckpt and ckpt[k][1] != "object"]
        if len(present) < 2 or len({ckpt[k] for k in present}) > 1:
            continue  # a shape or dtype difference is reported as such
        keys = [view.source_key(k) for k in present]
        ranges = {_range(reader, k) for k in keys}
        if len(ranges) == 1 and None not in ranges:
            continue  # one byte range under both names (a tied torch.save): nothing to read
        first = reader.load(keys[0])
        if any(not _same(first, reader.load(k)) for k in keys[1:]):
            out.append(tuple(present))
    return tuple(out)


def _range(reader: CheckpointReader, key: str) -> tuple[str, int, int] | None:
    raw = reader.raw_source(key)
    return None if raw is None else (raw.path, raw.offset, raw.length)


def _same(a: Any, b: Any) -> bool:
    import torch

    return bool(a.shape == b.shape and a.dtype == b.dtype and (torch.equal(a, b) or torch.equal(
        a.contiguous().flatten().view(torch.uint8), b.contiguous().flatten().view(torch.uint8))))


TIE_CONFLICT_FIX = ("build the model with its parameters untied (transformers: "
                    "tie_word_embeddings=False), as the checkpoint was saved")


def source_of(reader: CheckpointReader, view: StateDictView) -> Source:
    """How a snippet loads ``view``: the file (a folder's member), the key inside, the format."""
    tree = reader.tree()
    top = {str(k) for k in tree} if isinstance(tree, dict) else set()
    origin = "lightning" if "pytorch-lightning_version" in top else ""
    fmt = getattr(reader, "format", None)  # an in-memory state_dict has none
    if fmt == Format.FOLDER and view.prefix:
        name, inner = reader.split_key(view.prefix)  # type: ignore[attr-defined]
        fmt = "safetensors" if name.endswith(".safetensors") else "torch"
        return Source(reader.path, os.path.join(reader.path, name), inner, fmt, origin)
    if fmt == Format.SAFETENSORS:
        return Source(reader.path, reader.path, "", "safetensors", origin)
    if fmt == Format.SAFETENSORS_SHARDED:
        folder = reader.path if os.path.isdir(reader.path) else os.path.dirname(reader.path)
        return Source(reader.path, folder, "", "safetensors-sharded", origin)
    return Source(reader.path, reader.path, view.prefix, "torch", origin)


def state_table(reader: CheckpointReader, view: StateDictView) -> dict[str, tuple[Shape, str]]:
    """The state_dict's keys with shape and dtype, plus each module's non-tensor extra state
    (``x._extra_state``, whose value is flattened into entries under it) as one object key:
    ``load_state_dict(strict=True)`` needs it as much as a weight."""
    table: dict[str, tuple[Shape, str]] = {e.key: (e.shape, e.dtype) for e in view.entries}
    lead = view.prefix + "." if view.prefix else ""
    for e in reader.entries():
        if isinstance(e, ObjectEntry) and e.key.startswith(lead):
            key = e.key[len(lead):]
            head, found, tail = key.partition(EXTRA_STATE)
            if found and (not head or head.endswith(".")) and (not tail or tail.startswith(".")):
                table.setdefault(head + EXTRA_STATE, ((), "object"))
    return table


def _best_view(reader: CheckpointReader, views: list[StateDictView], sig: ModelSignature,
               traits: ModelTraits, allow_tied: bool) -> tuple[StateDictView, FixPlan]:
    """The candidate state_dict whose plan fills the most model keys (the found one on ties)."""
    best: tuple[StateDictView, FixPlan] | None = None
    for view in views:
        table = state_table(reader, view)
        plan = render_plan(find_plan(source_of(reader, view), table, sig, traits,
                                     allow_tied=allow_tied))
        if plan.command and any(dtype == "object" for _, dtype in table.values()):
            plan = dataclasses.replace(plan, command="", command_note=(
                "remap writes plain tensors only and would leave out the _extra_state entries; "
                "use the Python snippet"))
        if best is None or (plan.filled, -plan.after.unexpected, -len(plan.steps)) > \
                (best[1].filled, -best[1].after.unexpected, -len(best[1].steps)):
            best = (view, plan)
    if best is None:
        raise ValueError("no state_dict candidates")  # find_state_dict always gives one
    return best


def diff_against_model(source: CheckpointReader | Mapping[str, Any],
                       model: nn.Module | ModelSignature, *, key: str | None = None,
                       model_name: str = "", allow_tied: bool = False) -> DiffResult:
    """Compare a checkpoint's state_dict with what a model's ``load_state_dict`` expects.

    Args:
        source: an open checkpoint, or an in-memory state_dict / training checkpoint dict.
        model: an ``nn.Module`` (ideally on the meta device) or a ``ModelSignature``; a module
            also gives framework-native advice.
        key: dotted path of the state_dict; found by name when omitted.
        model_name: the model spec, for the report.
        allow_tied: absent tied aliases count as loadable.

    Returns:
        The comparison and the fix plan; tensor data is read only for parameters the model ties
        that the checkpoint holds under two names.

    Raises:
        CkptError: the checkpoint cannot be read, or ``key`` is not in the checkpoint.

    Example:
        >>> with ckpttools.open_checkpoint("model.pth") as ckpt:
        ...     result = ckpttools.diff_against_model(ckpt, build_model("mypkg:Net"))
        >>> result.verdict
        'strict load would fail: 0 missing, 2 unexpected, 0 shape mismatches (120 keys match)'
    """
    reader = as_reader(source)
    if isinstance(model, ModelSignature):
        sig, traits = model, ModelTraits()
    else:
        sig, traits = signature_of_model(model, model_name), detect_traits(model)
    views = [find_state_dict(reader, key)] if key is not None else state_dict_candidates(reader)
    view, plan = _best_view(reader, views, sig, traits, allow_tied)
    ckpt = state_table(reader, view)
    cmp = compare_keys(ckpt, sig)
    loaded, total = _coverage(cmp, sig)
    warns = []
    if cmp.shape_mismatches:  # not "loads 0%": the load raises before it copies anything
        n = plural(len(cmp.shape_mismatches), "shape mismatch", "shape mismatches")
        warns.append(f"strict=False would raise on {n} and load nothing; follow the fix plan")
    elif total and loaded / total < COVERAGE_WARNING and cmp.problems:
        warns.append(f"strict=False would load only {100 * loaded / total:.0f}% of the model's "
                     "parameters; the rest keep their initialisation")
    if cmp.tied and not allow_tied:
        warns.append(TIED_NOTE)
    conflicts = _tie_conflicts(reader, view, ckpt, sig)
    if conflicts:
        warns.append(TIE_CONFLICT_FIX)
    return DiffResult(
        checkpoint=reader.path, model=model_name or sig.name, state_dict=view.prefix,
        state_dict_note=view.describe(),
        checkpoint_keys={k: tuple(s) for k, (s, _) in ckpt.items()},
        checkpoint_dtypes={k: d for k, (_, d) in ckpt.items()},
        model_keys={k.key: k.shape for k in sig.keys},
        model_dtypes={k.key: k.dtype for k in sig.keys},
        model_kinds={k.key: k.kind for k in sig.keys}, comparison=cmp,
        non_persistent=sig.non_persistent, loaded_params=loaded, total_params=total,
        plan=plan, allow_tied=allow_tied, warnings=tuple(warns), tie_conflicts=conflicts)
