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
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpttools.ops.diagnose.fixes import QUANTIZED_VERSIONS

if TYPE_CHECKING:
    from ckpttools.ops.diagnose.fixes import Cause
    from ckpttools.ops.fix_plan import FixPlan
    from ckpttools.ops.model_diff import DiffResult

_REPARAMETRIZE = re.compile(r'^torch\.nn\.utils\.(?:parametrizations\.)?(?:spectral_norm|weight_norm)'
                            r'\(model\.get_submodule\("[\w.]+"\)\)$')
_QUANTIZE = re.compile(r"^model = torch\.ao\.quantization\.quantize_dynamic\(model, "
                       r"\{torch\.nn\.Linear\}, dtype=torch\.(?:qint8|float16)\)$")


def _changes(code: str) -> list[str] | None:
    """The lines of ``code`` between loading ``sd`` and loading it into the model, when every
    one of them gives the model's layers another form (and nothing else happens)."""
    lines = [line for line in code.split("\n") if line]
    if len(lines) < 4 or not lines[1].startswith("sd = ") or lines[-1] != "model.load_state_dict(sd)":
        return None
    middle = lines[2:-1]
    if middle and all(_REPARAMETRIZE.match(l) for l in middle):
        return middle
    versions = QUANTIZED_VERSIONS.rstrip("\n").split("\n")
    return middle if middle and _QUANTIZE.match(middle[0]) and middle[1:] == versions else None


def _proven(changes: Sequence[str], model: Any, ckpt: Mapping[str, Sequence[int]]) -> bool:
    """The model, changed so, has the checkpoint's keys (and shapes, where it has tensors)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return False  # a JSON signature: nothing to run the change on
    want = {k: tuple(v) for k, v in ckpt.items()}
    if _QUANTIZE.match(changes[0]):
        return _quantized_keys(model) == {k: s for k, s in want.items()
                                          if not k.endswith("._packed_params.dtype")}
    changed = copy.deepcopy(model)
    try:  # ckpttools' own lines (matched above), on a meta copy
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


def model_side_fix(cause: Cause, diff: DiffResult, plan: FixPlan, model: Any) -> str | None:
    """The cause's own fix with the file's loading lines, when it changes the model's layers
    and the change is proven; None otherwise (the plan stays the fix)."""
    from ckpttools.ops.plan_text import load_lines

    changes = _changes(cause.fix_code)
    if changes is None or not plan.left or not _proven(changes, model, diff.checkpoint_keys):
        return None
    imports = "import collections, torch" if "collections." in "".join(changes) else "import torch"
    return "\n".join([imports, *load_lines(plan.source), *changes, "model.load_state_dict(sd)"])
