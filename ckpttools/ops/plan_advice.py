"""Framework-native advice next to the generic fix plan, only for the model actually given.

The framework comes from the model object (:func:`ckpttools.ops.frameworks.detect_traits`);
Lightning's ``load_from_checkpoint`` advice comes from the checkpoint's own
``pytorch-lightning_version`` entry.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckpttools.ops.fix_plan import FixPlan

Advice = dict[str, str]


def _prefix(plan: FixPlan, kind: str) -> str:
    return next((s.args[0] for s in plan.steps if s.kind == kind), "")


def _resized(plan: FixPlan) -> bool:
    return any(s.kind == "drop" and "another shape" in s.summary for s in plan.steps)


def _folder(plan: FixPlan) -> str:
    path = plan.source.path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return path
    beside = os.path.dirname(os.path.abspath(path))  # model.safetensors given inside its folder
    if os.path.isfile(path) and os.path.isfile(os.path.join(beside, "config.json")):
        return beside
    return "FOLDER_WITH_CONFIG_JSON"


def _transformers(plan: FixPlan) -> list[Advice]:
    t, out = plan.traits, []
    cls, folder = t.class_name, _folder(plan)
    base = t.base_model_prefix + "." if t.base_model_prefix else ""
    if _resized(plan):
        labels = f", num_labels={t.num_classes}" if t.num_classes is not None else ""
        resized = ", ".join(plan.left[:3]) + (", ..." if len(plan.left) > 3 else "")
        # whatever differs in shape (a head, or a position table of another size) or is missing
        out.append({"summary": "from_pretrained with ignore_mismatched_sizes=True initialises the "
                               f"weights it cannot load ({resized}) and loads the rest",
                    "code": f"model = {cls}.from_pretrained({folder!r}{labels}, "
                            "ignore_mismatched_sizes=True)"})
    if base and base in (_prefix(plan, "strip-prefix"), _prefix(plan, "add-prefix")):
        out.append({"summary": f"from_pretrained adds or strips '{base}' itself (the "
                               "base_model_prefix) between a task model and the bare model",
                    "code": f"model = {cls}.from_pretrained({folder!r})"})
    if any(s.kind == "copy-embedding" for s in plan.steps):
        out.append({"summary": "from_pretrained with tie_word_embeddings=True ties the output "
                               "embedding to the input one, as the checkpoint was saved",
                    "code": f"model = {cls}.from_pretrained({folder!r}, tie_word_embeddings=True)"})
    if any(s.kind == "tie" for s in plan.steps):
        out.append({"summary": "the checkpoint leaves out tied aliases; from_pretrained re-ties "
                               "them (so does model.tie_weights() after a strict=False load)",
                    "code": f"model = {cls}.from_pretrained({folder!r})"})
    return out


def _timm(plan: FixPlan) -> list[Advice]:
    t = plan.traits
    resample = any(s.kind == "resample-pos-embed" for s in plan.steps)
    if not (resample or _resized(plan)) or not t.architecture:
        return []
    # the model's own head and input size: create_model drops a head of another size and
    # resamples the position embedding to the grid of img_size
    args = [f"pretrained_cfg_overlay=dict(file={plan.source.file!r})"]
    if t.num_classes is not None:
        args.append(f"num_classes={t.num_classes}")
    if t.img_size:
        args.append(f"img_size={t.img_size[0] if len(set(t.img_size)) == 1 else t.img_size}")
    return [{"summary": "timm's create_model loads the file itself: it resamples the position "
                        "embedding and leaves a resized head initialised",
             "code": f"model = timm.create_model({t.architecture!r}, pretrained=True, "
                     f"{', '.join(args)})  # plus the other arguments the model was built with"}]


def _wrapper(plan: FixPlan) -> list[Advice]:
    t = plan.traits
    added = _prefix(plan, "add-prefix")
    if not t.inner or added != t.inner + ".":
        return []
    what = {"torch.compile": "the compiled model's original module",
            "lightning": "the LightningModule's inner module"}.get(t.framework, "the wrapped module")
    return [{"summary": f"load into {what} instead of adding '{added}'",
             "code": f"model.{t.inner}.load_state_dict(sd)"}]


def _lightning_checkpoint(plan: FixPlan) -> list[Advice]:
    stripped = _prefix(plan, "strip-prefix")
    if plan.source.origin != "lightning" or not stripped:
        return []
    return [{"summary": "a Lightning checkpoint: with its LightningModule class, "
                        f"load_from_checkpoint restores it and '.{stripped.rstrip('.')}' is this model",
             "code": f"model = LitModule.load_from_checkpoint({plan.source.file!r})"
                     f".{stripped.rstrip('.')}  # LitModule: your LightningModule class"}]


def advise(plan: FixPlan) -> tuple[Advice, ...]:
    """Advice for the plan's model; empty for a plain ``nn.Module`` and a plain checkpoint."""
    by_framework = {"transformers": _transformers, "timm": _timm}
    out = by_framework.get(plan.traits.framework, _wrapper)(plan) + _lightning_checkpoint(plan)
    if not plan.steps:
        return ()
    return tuple({"framework": plan.traits.framework or "lightning", **a} for a in out)
