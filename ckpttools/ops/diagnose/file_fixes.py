"""From files, the fixes some causes need beyond the fix plan, each proven before it is shown.

The plan of ``diff --model`` renames and drops keys. Where a cause needs more, its fix is its own:

- **transposed_weights**: 2-D weights stored (in, out) where the model holds (out, in) are
  transposed (the plan drops them: shapes cannot prove a transpose);
- **fused_projection**: a fused q/k/v weight is cut into the model's separate layers, or the
  checkpoint's separate layers stacked into the model's fused one. Only layouts that stack q, k
  and v along the output rows: ``nn.MultiheadAttention``'s ``in_proj_weight`` (documented as q,
  k, v stacked) and ``qkv`` / ``qkv_proj`` / ``Wqkv`` / ``to_qkv`` linears; interleaved layouts
  (GPT-NeoX's ``query_key_value``, per head) and transposed ones (GPT-2's ``c_attn``, a Conv1D)
  would be cut wrong by rows, and get none;
- **adapter_or_quantization** with LoRA keys: the plan, then the adapter merged from its folder;
- layers saved reparametrized or quantized: the model's layers given that form
  (:mod:`model_side_fix`).

The first two are shown only when the plan is one step that drops exactly the keys the fix
fills in (the plan's own counts then prove it), and the fused one when the shapes stack.
"""

from __future__ import annotations

import os

import re
from typing import TYPE_CHECKING, Any

from ckpttools.ops.fix_plan import FUSED_QKV
from ckpttools.ops.plan_text import load_lines

if TYPE_CHECKING:
    from ckpttools.ops.diagnose.evidence import Evidence
    from ckpttools.ops.diagnose.fixes import Cause
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


def own_fix(cause: Cause, ev: Evidence, diff: DiffResult, plan: FixPlan, model: Any) -> str | None:
    """The cause's own fix from files, or None when the plan is its fix."""
    from ckpttools.ops.diagnose.model_side_fix import model_side_fix

    fix = {"transposed_weights": transposed_fix, "fused_projection": fused_fix,
           "adapter_or_quantization": merge_adapter_fix}.get(cause.label)
    # a layer saved reparametrized or quantized: the model is changed, not the keys
    return (fix and fix(diff, plan)) or model_side_fix(cause, ev, diff, plan, model)


def dropped_alone(diff: DiffResult, plan: FixPlan) -> set[str] | None:
    """The checkpoint keys the plan drops, when dropping them is all it does and all that is
    left is model keys at their initialisation; None otherwise."""
    if len(plan.steps) != 1 or plan.steps[0].kind != "drop" or plan.after.unexpected \
            or plan.after.mismatched:
        return None
    return {k for k in diff.checkpoint_keys if re.search(plan.steps[0].args[0], k)}


def transposed_fix(diff: DiffResult, plan: FixPlan) -> str | None:
    """The snippet that transposes the 2-D weights stored the other way round, when they are
    all the plan drops and leaves initialised (those keys filled with the model's shapes,
    nothing else changed). None when the plan does more than that."""
    swapped = {m.key for m in diff.comparison.shape_mismatches if m.transposed}
    if not swapped or plan.source.fmt != "torch" or set(plan.left) != swapped \
            or dropped_alone(diff, plan) != swapped:
        return None
    return "\n".join([
        "import torch", *load_lines(plan.source),
        f"for k in {sorted(swapped)!r}:  # stored (in, out): nn.Linear holds (out, in)",
        "    sd[k] = sd[k].t().contiguous()",
        "# square weights of the same layers are swapped too but cannot show it by shape: if the",
        "# file comes from an (in, out) layout (GPT-2's Conv1D), transpose those layers' weights too",
        "model.load_state_dict(sd)"])


def merge_adapter_fix(diff: DiffResult, plan: FixPlan) -> str | None:
    """A PEFT model's state_dict in the plain model: the plan loads the base weights and drops
    the adapter's lora_A/lora_B (their scale, alpha / r, is only in the adapter's config), so
    the fix is the plan and then the adapter merged from its folder. A file of adapter weights
    alone gives the plan nothing to load: the fix is the merge, into a model that holds its
    base weights. None without LoRA keys."""
    if not any(".lora_A." in k or ".lora_B." in k for k in diff.checkpoint_keys):
        return None
    folder = _adapter_folder(plan.source.path)
    setting = (f"ADAPTER_DIR = {folder!r}  # the checkpoint's folder: adapter_config.json" if folder
               else 'ADAPTER_DIR = "path/to/adapter"  # set: the folder PEFT\'s save_pretrained '
               "wrote (adapter_config.json)")
    merge = ("from peft import PeftModel\n"
             "model = PeftModel.from_pretrained(model, ADAPTER_DIR).merge_and_unload()")
    if plan.filled == 0:  # adapter weights only: loading them into the plain model is nothing
        return (setting + "\n# the file holds no base weights: load them into the model first "
                "(the checkpoint the adapter was trained on), then merge the adapter:\n" + merge)
    return (setting + "\n" + plan.python + "\n"
            "# the plan above loads the base weights and leaves out the adapter's; merge it:\n"
            + merge)


def _adapter_folder(path: str) -> str | None:
    """The folder of PEFT's ``save_pretrained`` that ``path`` is or lies in (its
    adapter_config.json beside the weights), else None."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    return folder if os.path.isfile(os.path.join(folder, "adapter_config.json")) else None


def fused_fix(diff: DiffResult, plan: FixPlan) -> str | None:
    """The snippet that cuts (or stacks) fused q/k/v weights, when they are all the plan leaves
    initialised and its only step drops them. None when the plan does more than that, or any
    dropped key is not a fused or separate projection whose shapes stack."""
    dropped = dropped_alone(diff, plan)
    if dropped is None:
        return None
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
