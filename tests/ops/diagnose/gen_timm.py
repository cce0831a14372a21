"""Generated diagnose cases from timm architectures built without weights (marker ``vision``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from tests.ops.diagnose.generated_corpus import GeneratedCase, load_error, presentations


def _texts() -> dict[str, tuple[str, str]]:
    import timm
    import torch

    def make(name: str, **kw: Any) -> nn.Module:
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, **kw)

    r18 = dict(make("resnet18").state_dict())
    vit = dict(make("vit_tiny_patch16_224").state_dict())
    return {
        "resnet18-num_classes": ("head_size_mismatch", load_error(make("resnet18", num_classes=10), r18)),
        "resnet18-into-resnet34": ("architecture_variant", load_error(make("resnet34"), r18)),
        "resnet18-dataparallel": ("prefix_added", load_error(make("resnet18"), dict(nn.DataParallel(make("resnet18")).state_dict()))),
        "resnet18-in_chans": ("architecture_variant", load_error(make("resnet18", in_chans=1), r18)),
        "resnet18-headless": ("new_task_head", load_error(make("resnet18"), dict(make("resnet18", num_classes=0).state_dict()))),
        "vit-img_size": ("architecture_variant", load_error(make("vit_tiny_patch16_224", img_size=384), vit)),
        "vit-into-resnet": ("wrong_model", load_error(make("resnet18"), vit)),
    }


def generate_timm() -> list[GeneratedCase]:
    """Every timm case in every presentation."""
    return [GeneratedCase(f"{name}-{how}", label, shown, decidable)
            for name, (label, text) in _texts().items()
            for how, shown, decidable in presentations(text)]
