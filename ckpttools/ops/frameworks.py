"""What the model object says about the framework it comes from, and the framework's own way
to load a checkpoint that needs a fix.

Detection reads classes and attributes of the model object only (never key names), and never
imports a framework: a model of a framework means the framework is already in ``sys.modules``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelTraits:
    """The framework facts of one model object.

    Attributes:
        framework: ``transformers``, ``timm``, ``lightning``, ``torch.compile``,
            ``DistributedDataParallel``, ``DataParallel`` or ``""``.
        class_name: the model's class.
        inner: the attribute holding the wrapped module (``_orig_mod``, ``module``) or, for a
            LightningModule, the child module holding most parameters (``model``).
        base_model_prefix: transformers' ``base_model_prefix`` (``bert``).
        architecture: timm's model name from ``pretrained_cfg`` (``vit_tiny_patch16_224``).
        grid: timm's patch grid ``(h, w)`` of an absolute position embedding.
        prefix_tokens: timm's ``num_prefix_tokens`` (class and register tokens).
        num_classes: the classifier's output size, when the model says.
        img_size: timm's input size ``(h, w)``.
        embeddings: transformers' ``(output, input)`` embedding weight keys (``lm_head.weight``,
            ``model.embed_tokens.weight``), when the model has both.
    """

    framework: str = ""
    class_name: str = ""
    inner: str = ""
    base_model_prefix: str = ""
    architecture: str = ""
    grid: tuple[int, ...] = ()
    prefix_tokens: int = 0
    num_classes: int | None = None
    img_size: tuple[int, ...] = ()
    embeddings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"framework": self.framework, "class_name": self.class_name}


def _module_class(name: str, attr: str) -> Any:
    module = sys.modules.get(name)
    return getattr(module, attr, None) if module is not None else None


def _is(model: Any, module: str, attr: str) -> bool:
    cls = _module_class(module, attr)
    return cls is not None and isinstance(model, cls)


def _largest_child(model: nn.Module) -> str:
    sizes = {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children()}
    return max(sizes, key=lambda n: sizes[n]) if sizes else ""


def _timm(model: nn.Module) -> ModelTraits:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    patch = getattr(model, "patch_embed", None)
    grid = tuple(getattr(patch, "grid_size", ()) or ())
    img = tuple(getattr(patch, "img_size", ()) or ())
    return ModelTraits("timm", type(model).__name__, architecture=str(cfg.get("architecture", "")),
                       grid=grid, prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
                       num_classes=getattr(model, "num_classes", None), img_size=img)


def _embedding_keys(model: Any) -> tuple[str, ...]:
    """``(output, input)`` embedding weight keys of a transformers model, or ``()``."""
    try:
        pair = (model.get_output_embeddings(), model.get_input_embeddings())
    except Exception:  # a model without a head, or one whose getters are not implemented
        return ()
    names = {id(m): n for n, m in model.named_modules()}
    if not all(m is not None and id(m) in names and hasattr(m, "weight") for m in pair):
        return ()
    return tuple(f"{names[id(m)]}.weight" for m in pair)


def detect_traits(model: nn.Module) -> ModelTraits:
    """The framework a model object belongs to, from its classes and attributes.

    Args:
        model: the model (meta device is fine).

    Returns:
        Its traits; ``framework`` is ``""`` for a plain ``nn.Module``.
    """
    name = type(model).__name__
    if _is(model, "torch._dynamo.eval_frame", "OptimizedModule"):
        return ModelTraits("torch.compile", name, inner="_orig_mod")
    if _is(model, "torch.nn.parallel", "DistributedDataParallel"):
        return ModelTraits("DistributedDataParallel", name, inner="module")
    if _is(model, "torch.nn", "DataParallel"):
        return ModelTraits("DataParallel", name, inner="module")
    if _is(model, "transformers", "PreTrainedModel"):
        config = getattr(model, "config", None)
        return ModelTraits("transformers", name,
                           base_model_prefix=str(getattr(model, "base_model_prefix", "") or ""),
                           num_classes=getattr(config, "num_labels", None),
                           embeddings=_embedding_keys(model))
    if _is(model, "lightning.pytorch", "LightningModule") or \
            _is(model, "pytorch_lightning", "LightningModule"):
        return ModelTraits("lightning", name, inner=_largest_child(model))
    if type(model).__module__.startswith("timm.") and hasattr(model, "pretrained_cfg"):
        return _timm(model)
    return ModelTraits(class_name=name)
