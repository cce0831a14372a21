"""From files, a fused attention projection on one side and separate q/k/v on the other: the fix
that cuts the fused weight into the model's parts (or stacks the checkpoint's parts into the
model's fused one), proven on shapes before it is shown.

The plan of ``diff --model`` drops such keys (renames cannot cut a tensor), which leaves the
attention at its initialisation; this fix keeps the saved values. Only layouts that stack q, k
and v along the output rows are cut or stacked: ``nn.MultiheadAttention``'s ``in_proj_weight``
(documented as q, k, v stacked), and ``qkv`` / ``qkv_proj`` / ``Wqkv`` / ``to_qkv`` linears.
Interleaved layouts (GPT-NeoX's ``query_key_value``, per head) and transposed ones (GPT-2's
``c_attn``, a Conv1D) would be cut wrong by rows, and get no fix.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ckpttools.ops.fix_plan import FUSED_QKV

if TYPE_CHECKING:
    from ckpttools.ops.fix_plan import FixPlan
    from ckpttools.ops.model_diff import DiffResult

# the separate layers, in the order the fused rows hold them
_PART_NAMES = (("q_proj", "k_proj", "v_proj"), ("q", "k", "v"), ("query", "key", "value"),
               ("wq", "wk", "wv"), ("to_q", "to_k", "to_v"), ("q_lin", "k_lin", "v_lin"))

Shapes = dict[str, tuple[int, ...]]


def _parts(fused_key: str, keys: Shapes) -> tuple[str, ...] | None:
    """The separate keys that ``fused_key``'s rows hold, when ``keys`` has all three."""
    m = FUSED_QKV.match(fused_key)
    if m is None:
        return None
    leaf = m["mha"] or m["leaf"]
    for names in _PART_NAMES:
        parts = tuple(f"{m['head']}{n}.{leaf}" for n in names)
        if all(p in keys for p in parts):
            return parts
    return None


def _stacks(fused: tuple[int, ...], parts: list[tuple[int, ...]]) -> bool:
    """The parts, stacked along dim 0, have the fused tensor's shape."""
    return (all(len(p) == len(fused) and p[1:] == fused[1:] for p in parts)
            and sum(p[0] for p in parts) == fused[0])


def fused_fix(diff: DiffResult, plan: FixPlan) -> str | None:
    """The snippet that cuts (or stacks) fused q/k/v weights, when they are all the plan leaves
    initialised and its only step drops them. None when the plan does more than that, or any
    dropped key is not a fused or separate projection whose shapes stack."""
    from ckpttools.ops.plan_text import load_lines

    drops = [st for st in plan.steps if st.kind == "drop"]
    if len(plan.steps) != 1 or len(drops) != 1 or plan.after.unexpected or plan.after.mismatched:
        return None
    dropped = {k for k in diff.checkpoint_keys if re.search(drops[0].args[0], k)}
    model: Shapes = {k: tuple(v) for k, v in diff.model_keys.items()}
    ckpt: Shapes = {k: tuple(v) for k, v in diff.checkpoint_keys.items()}
    cuts = {k: p for k in dropped if (p := _parts(k, model)) is not None}
    stacks = {k: p for k in plan.left if (p := _parts(k, ckpt)) is not None}
    produced = {p for parts in cuts.values() for p in parts} | set(stacks)
    consumed = set(cuts) | {p for parts in stacks.values() for p in parts}
    if not produced or produced != set(plan.left) or consumed != dropped:
        return None
    if not all(_stacks(ckpt[k], [model[p] for p in parts]) for k, parts in cuts.items()) or \
            not all(_stacks(model[k], [ckpt[p] for p in parts]) for k, parts in stacks.items()):
        return None
    lines = ["import torch", *load_lines(plan.source)]
    if cuts:
        sizes = {k: [model[p][0] for p in parts] for k, parts in sorted(cuts.items())}
        lines += ["# the fused weight's rows are q, k and v stacked: cut them into the model's layers",
                  f"for fused, (parts, rows) in {({k: (list(cuts[k]), sizes[k]) for k in sizes})!r}.items():",
                  "    sd.update(zip(parts, sd.pop(fused).split(rows, dim=0)))"]
    if stacks:
        table = {k: list(parts) for k, parts in sorted(stacks.items())}
        lines += ["# the model's fused layer holds q, k and v stacked along its rows",
                  f"for fused, parts in {table!r}.items():",
                  "    sd[fused] = torch.cat([sd.pop(p) for p in parts], dim=0)"]
    return "\n".join([*lines, "model.load_state_dict(sd)"])
