"""Naming systematic differences between a checkpoint and a model, and the fix for each.

Fixes build on each other: a prefix first, then inferred rename rules, then what is left
(missing ``num_batches_tracked``, shape mismatches, extra or absent keys). Each fix carries the
result after it and the ones before it, a one-line Python fix, and the ``ckpttools remap``
command that writes a fixed checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.ops.keymatch import (
    KeyMapping,
    Rule,
    apply_rules,
    common_prefixes,
    infer_mapping,
    prefix_rules,
)
from ckpttools.ops.comparison import Comparison
from ckpttools.ops.state_dict import StateDictView

if TYPE_CHECKING:
    from ckpttools.ops.model_spec import ModelSignature

Shape = tuple[int, ...]
KNOWN_PREFIXES = {
    "module.": "nn.DataParallel / DistributedDataParallel",
    "_orig_mod.": "torch.compile",
    "module._orig_mod.": "DistributedDataParallel around torch.compile",
    "_orig_mod.module.": "torch.compile around DistributedDataParallel",
    "model.": "a Lightning-style wrapper",
    "_fsdp_wrapped_module.": "FSDP",
}


@dataclass(frozen=True)
class Fix:
    """A named systematic difference and how to remove it.

    Attributes:
        kind: ``nested``, ``strip-prefix``, ``add-prefix``, ``replace-prefix``, ``rename-rules``,
            ``num-batches-tracked``, ``drop-mismatched``, ``drop-unexpected`` or ``partial-load``.
        summary: what was found, in one sentence.
        missing / unexpected / mismatched: counts after applying this fix and those before it.
        python: a one-line Python fix.
        command: the ``ckpttools remap`` command writing a fixed checkpoint ("" when none can).
        rules: rename rules (``regex, replacement``) the fix amounts to.
        strict: whether ``strict=True`` loading works after the fix.
    """

    kind: str
    summary: str
    missing: int
    unexpected: int
    mismatched: int
    python: str
    command: str = ""
    rules: tuple[Rule, ...] = ()
    strict: bool = True

    @property
    def after(self) -> str:
        text = f"{self.missing} missing, {self.unexpected} unexpected"
        return text + (f", {self.mismatched} shape mismatches" if self.mismatched else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "summary": self.summary, "after": self.after,
                "missing": self.missing, "unexpected": self.unexpected,
                "mismatched": self.mismatched, "python": self.python, "command": self.command,
                "rules": [f"{p}={r}" for p, r in self.rules], "strict": self.strict}


@dataclass
class _Plan:
    """The fix steps accumulated so far."""

    path: str
    prefix: str
    strip: str | None = None
    add: str | None = None
    renames: tuple[Rule, ...] = ()
    drops: tuple[str, ...] = ()
    python_steps: tuple[str, ...] = ()

    @property
    def rules(self) -> list[Rule]:
        return [*prefix_rules(self.strip, self.add), *self.renames]

    def command(self) -> str:
        base, ext = os.path.splitext(os.path.basename(os.path.normpath(self.path)))
        out = os.path.join(os.path.dirname(self.path), f"{base}-fixed{ext or '.pth'}")
        args = ["ckpttools", "remap", self.path, out]
        if self.prefix:
            args += ["--key", self.prefix]
        if self.strip:
            args += ["--strip-prefix", self.strip]
        if self.add:
            args += ["--add-prefix", self.add]
        for p, r in self.renames:
            args += ["--rename", f"{p.replace('=', chr(92) + '=')}={r}"]
        for d in self.drops:
            args += ["--drop", d]
        return shlex.join(args)

    def python(self, strict: bool = True) -> str:
        if self.path.endswith(".safetensors"):
            load = f"sd = safetensors.torch.load_file({self.path!r})"
        else:
            load = f"sd = torch.load({self.path!r}, weights_only=True)"
        load += "".join(f"[{p!r}]" for p in self.prefix.split(".") if p)
        tail = "model.load_state_dict(sd)" if strict else "model.load_state_dict(sd, strict=False)"
        body = [load, *self.python_steps, tail]
        imports = [m for m in ("re", "functools") if any(f"{m}." in s for s in self.python_steps)]
        return "; ".join(([f"import {', '.join(imports)}"] if imports else []) + body)


def _renamed(ckpt: Mapping[str, tuple[Shape, str]], rules: Sequence[Rule],
             drops: Sequence[str] = ()) -> dict[str, tuple[Shape, str]]:
    return {apply_rules(k, rules): v for k, v in ckpt.items()
            if not any(re.search(d, k) for d in drops)}


def _prefix_fix(plan: _Plan, ckpt: Mapping[str, tuple[Shape, str]], sig: ModelSignature,
                cmp: Comparison, compare: Callable[..., Comparison]) -> tuple[Fix, Comparison] | None:
    model_keys = [k.key for k in sig.keys]
    strips: list[str | None] = [None, *common_prefixes(ckpt)]
    adds: list[str | None] = [None, *common_prefixes(model_keys)]
    best: tuple[int, int, str | None, str | None, Comparison] | None = None
    for s in strips:
        for a in adds:
            if (s is None and a is None) or s == a:
                continue
            got = compare(_renamed(ckpt, prefix_rules(s, a)), sig)
            score = (got.problems, (s is not None) + (a is not None))
            if best is None or score < best[:2]:
                best = (*score, s, a, got)
    if best is None or best[0] >= cmp.problems:
        return None
    _, _, plan.strip, plan.add, got = best
    steps = []
    if plan.strip:
        steps.append(f"sd = {{k.removeprefix({plan.strip!r}): v for k, v in sd.items()}}")
    if plan.add:
        steps.append(f"sd = {{{plan.add!r} + k: v for k, v in sd.items()}}")
    plan.python_steps += tuple(steps)
    if plan.strip and plan.add:
        kind, summary = "replace-prefix", (f"checkpoint keys start with '{plan.strip}' where the "
                                           f"model's start with '{plan.add}'")
    elif plan.strip:
        origin = KNOWN_PREFIXES.get(plan.strip, "a wrapper module")
        kind, summary = "strip-prefix", (f"checkpoint keys carry the prefix '{plan.strip}' "
                                         f"(saved from {origin}); strip it")
    else:
        kind, summary = "add-prefix", (f"model keys start with '{plan.add}' and the "
                                       "checkpoint's do not; add it")
    return _fix(kind, summary, plan, got), got


def _fix(kind: str, summary: str, plan: _Plan, got: Comparison, *, command: bool = True,
         strict: bool = True) -> Fix:
    return Fix(kind, summary, len(got.missing), len(got.unexpected), len(got.shape_mismatches),
               plan.python(strict), plan.command() if command else "", tuple(plan.rules), strict)


def _rules_fix(plan: _Plan, ckpt: Mapping[str, tuple[Shape, str]], sig: ModelSignature,
               cmp: Comparison, compare: Callable[..., Comparison],
               renamed: Mapping[str, tuple[Shape, str]]) -> tuple[Fix, Comparison, KeyMapping] | None:
    model = sig.by_key()
    mapping = infer_mapping({k: tuple(renamed[k][0]) for k in cmp.unexpected},
                            {k: model[k].shape for k in cmp.missing})
    if not mapping.rules:
        return None
    got = compare(_renamed(ckpt, [*plan.rules, *mapping.rules]), sig)
    if got.problems >= cmp.problems:
        return None
    plan.renames = mapping.rules
    plan.python_steps += (
        f"sd = {{functools.reduce(lambda k, r: re.sub(r[0], r[1], k), {list(mapping.rules)!r}, k)"
        ": v for k, v in sd.items()}",)
    summary = (f"no prefix explains the difference; {len(mapping.rules)} inferred rename rules "
               f"map {len(mapping.pairs)} keys, {len(mapping.unmatched_checkpoint)} checkpoint "
               f"and {len(mapping.unmatched_model)} model keys stay unmatched")
    return _fix("rename-rules", summary, plan, got), got, mapping


def drop_pattern(keys: Sequence[str], all_keys: Sequence[str]) -> str:
    """A regex matching ``keys`` and no other of ``all_keys``, by shortest shared module prefix:
    ``["head.weight", "head.bias"]`` -> ``^(?:head)(?:\\.|$)``."""
    keep = [k for k in all_keys if k not in set(keys)]
    heads: list[str] = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            head = ".".join(parts[:n])
            if not any(k == head or k.startswith(head + ".") for k in keep):
                break
        if head not in heads and not any(head == h or head.startswith(h + ".") for h in heads):
            heads.append(head)
    return "^(?:" + "|".join(re.escape(h) for h in heads) + r")(?:\.|$)"


def _source_keys(ckpt: Mapping[str, Any], rules: Sequence[Rule], new_keys: set[str]) -> list[str]:
    return [k for k in ckpt if apply_rules(k, rules) in new_keys]


def _leftover_fixes(plan: _Plan, ckpt: Mapping[str, tuple[Shape, str]], sig: ModelSignature,
                    cmp: Comparison, compare: Callable[..., Comparison]) -> list[Fix]:
    fixes: list[Fix] = []
    nbt = [k for k in cmp.missing if k.endswith("num_batches_tracked")]
    if nbt:
        plan.python_steps += ("sd.update({k: v for k, v in model.state_dict().items() "
                              "if k.endswith('num_batches_tracked') and k not in sd})",)
        after = compare({**_renamed(ckpt, plan.rules, plan.drops),
                         **{k: (sig.by_key()[k].shape, "int64") for k in nbt}}, sig)
        fixes.append(_fix("num-batches-tracked", (
            f"{len(nbt)} BatchNorm num_batches_tracked counters are missing (a checkpoint from "
            "before torch 0.4.1, or trimmed); they only count batches: take the model's own, or "
            "rewrite the file with remap, whose plain state_dict lets BatchNorm fill them with 0"),
            plan, after))
        cmp = after
    mism = {m.key for m in cmp.shape_mismatches}
    extra = set(cmp.unexpected)
    for kind, keys, what in (("drop-mismatched", mism, "have other shapes in the model (a "
                              "changed head or resized layer); drop them so they keep their "
                              "initialisation"),
                             ("drop-unexpected", extra, "are not in the model; drop them")):
        if not keys:
            continue
        sources = _source_keys(ckpt, plan.rules, keys)
        plan.drops += (drop_pattern(sources, list(ckpt)),)
        plan.python_steps += (f"sd = {{k: v for k, v in sd.items() if not re.search("
                              f"{plan.drops[-1]!r}, k)}}",)
        cmp = compare(_renamed(ckpt, plan.rules, plan.drops), sig)
        fixes.append(_fix(kind, f"{len(keys)} checkpoint keys {what}", plan, cmp,
                          strict=not cmp.missing))
    rest = [k for k in cmp.missing if not k.endswith("num_batches_tracked")]
    if rest and not cmp.unexpected and not cmp.shape_mismatches and all(f.strict for f in fixes):
        fixes.append(_fix("partial-load", (
            f"the model has {len(rest)} keys the checkpoint lacks (extra layers or a new head); "
            "only strict=False loads it, and those keep their initialisation"),
            plan, cmp, command=bool(plan.drops or plan.rules), strict=False))
    return fixes


def propose_fixes(path: str, view: StateDictView, ckpt: Mapping[str, tuple[Shape, str]],
                  sig: ModelSignature, cmp: Comparison,
                  compare: Callable[..., Comparison]) -> tuple[list[Fix], KeyMapping | None]:
    """Name the systematic differences between ``ckpt`` and ``sig``, with a fix for each.

    Args:
        path: the checkpoint path (for the printed commands).
        view: where the state_dict was found.
        ckpt: the state_dict's ``key -> (shape, dtype)``.
        sig: the model's signature.
        cmp: ``compare(ckpt, sig)``.
        compare: the comparison function (``diff.compare_keys``).

    Returns:
        The fixes in the order to apply them, and the inferred mapping if one was needed.
    """
    plan = _Plan(path, view.prefix)
    fixes: list[Fix] = []
    if view.nested:
        nested = _fix("nested", f"the state_dict is nested under '{view.prefix}' (a training "
                      "checkpoint); index it before loading, or extract it", plan, cmp,
                      command=False)
        base = os.path.splitext(os.path.normpath(path))[0]
        extract = shlex.join(["ckpttools", "remap", path, f"{base}-state_dict.safetensors",
                              "--key", view.prefix])
        fixes.append(dataclasses.replace(nested, command=extract))
    if cmp.problems == 0:
        return fixes, None
    found = _prefix_fix(plan, ckpt, sig, cmp, compare)
    if found:
        fixes.append(found[0])
        cmp = found[1]
    mapping = None
    if cmp.missing and cmp.unexpected:
        inferred = _rules_fix(plan, ckpt, sig, cmp, compare, _renamed(ckpt, plan.rules))
        if inferred:
            fixes.append(inferred[0])
            cmp, mapping = inferred[1], inferred[2]
    fixes += _leftover_fixes(plan, ckpt, sig, cmp, compare)
    return fixes, mapping
