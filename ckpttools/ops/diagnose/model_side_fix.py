"""From files, a cause whose fix changes the model rather than the keys: the layers were saved
reparametrized (spectral_norm, weight_norm) or quantized (torch.ao's quantize_dynamic), and the
plain model is to be given the same form before loading. The plan of ``diff --model`` can only
rename and drop keys, so it leaves those weights at their initialisation; this fix keeps them.

It is shown only when proven on the model: the same change made to a copy of the meta model
gives exactly the checkpoint's keys and shapes (quantize_dynamic cannot run on the meta device:
the keys and shapes it writes for each Linear layer, by one pattern, are compared instead).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpttools.ops.diagnose.buffer_fixes import reparametrize_lines
from ckpttools.ops.diagnose.fixes import QUANTIZE_DYNAMIC

if TYPE_CHECKING:
    from ckpttools.ops.diagnose.evidence import Evidence
    from ckpttools.ops.diagnose.fixes import Cause
    from ckpttools.ops.fix_plan import FixPlan
    from ckpttools.ops.model_diff import DiffResult

def _changes(cause: Cause, ev: Evidence) -> list[str] | None:
    """The lines that give the model's layers the checkpoint's form, for the causes that read
    them from the keys (the same lines their fix from text prints)."""
    if cause.label == "version_buffers":
        return reparametrize_lines(ev) or None
    if cause.label == "adapter_or_quantization" and any("._packed_params." in k for k in ev.unexpected):
        return QUANTIZE_DYNAMIC.rstrip("\n").split("\n")
    return None


def _proven(changes: Sequence[str], model: Any, ckpt: Mapping[str, Sequence[int]]) -> bool:
    """The model, changed so, has the checkpoint's keys (and shapes, where it has tensors)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return False  # a JSON signature: nothing to run the change on
    want = {k: tuple(v) for k, v in ckpt.items()}
    if changes[0].startswith("model = torch.ao.quantization.quantize_dynamic("):
        return _quantized_keys(model) == {k: s for k, s in want.items()
                                          if not k.endswith("._packed_params.dtype")}
    changed = copy.deepcopy(model)
    try:  # ckpttools' own lines (reparametrize_lines), on a meta copy
        for line in changes:
            exec(line, {"torch": torch, "model": changed})  # noqa: S102
    except Exception:  # noqa: BLE001 - a layer the change does not fit: not proven
        return False
    return {k: tuple(v.shape) for k, v in changed.state_dict().items()} == want


def _quantized_keys(model: Any) -> dict[str, tuple[int, ...]] | None:
    """The keys and shapes quantize_dynamic gives the model's Linear layers: scale, zero_point and
    the packed (weight, bias) pair (the table lists a pair's items as ``.0``/``.1``)."""
    import torch

    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if not linear:
        return None
    out = {k: tuple(v.shape) for k, v in model.state_dict().items()
           if k.rpartition(".")[0] not in linear}
    for name, layer in linear.items():
        out.update({f"{name}.scale": (), f"{name}.zero_point": (),
                    f"{name}._packed_params._packed_params.0": tuple(layer.weight.shape)})
        if layer.bias is not None:
            out[f"{name}._packed_params._packed_params.1"] = tuple(layer.bias.shape)
    return out


def model_side_fix(cause: Cause, ev: Evidence, diff: DiffResult, plan: FixPlan,
                   model: Any) -> str | None:
    """The cause's own fix with the file's loading lines, when it changes the model's layers
    and the change is proven; None otherwise (the plan stays the fix)."""
    from ckpttools.ops.plan_text import load_lines

    changes = _changes(cause, ev)
    if changes is None or not plan.left or not _proven(changes, model, diff.checkpoint_keys):
        return None
    imports = "import collections, torch" if "collections." in "".join(changes) else "import torch"
    return "\n".join([imports, *load_lines(plan.source), *changes, "model.load_state_dict(sd)"])
