"""Tiny framework models built from configs (no downloads), importable as model specs:
``tests/_fw_models.py:bert_model``. Each factory returns a fresh seeded model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests._models import TinyNet


def _bert_config(**kwargs: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, **kwargs)


def bert_model() -> nn.Module:
    """A bare ``BertModel`` (with its pooler)."""
    from transformers import BertModel

    torch.manual_seed(0)
    return BertModel(_bert_config())


def bert_mlm() -> nn.Module:
    """``BertForMaskedLM``: ``bert.`` prefix, no pooler, ``cls.*`` head tied to the embeddings."""
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(_bert_config())


def bert_cls(num_labels: int = 2) -> nn.Module:
    """``BertForSequenceClassification`` with ``num_labels`` classes."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(_bert_config(num_labels=num_labels))


def _lightning_module() -> type:
    import lightning

    class LitNet(lightning.LightningModule):
        """A LightningModule around ``TinyNet`` with a buffer of its own."""

        def __init__(self, num_classes: int = 10) -> None:
            super().__init__()
            self.model = TinyNet(num_classes=num_classes)
            self.register_buffer("target_scale", torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x) * self.target_scale

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return LitNet


def lit_net(num_classes: int = 10) -> nn.Module:
    """The LightningModule (a spec for loading a plain state_dict into it)."""
    torch.manual_seed(0)
    return _lightning_module()(num_classes)


def tiny_vit(num_classes: int = 10, img_size: int = 32) -> nn.Module:
    """A one-block timm ViT made by ``timm.create_model`` (so it carries its pretrained_cfg)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1,
                             num_classes=num_classes, img_size=img_size)


def compiled_tiny_net() -> nn.Module:
    """``torch.compile(TinyNet())``: its keys carry ``_orig_mod.``."""
    torch.manual_seed(0)
    return torch.compile(TinyNet(), backend="eager")


def dataparallel_tiny_net() -> nn.Module:
    """``nn.DataParallel(TinyNet())``: its keys carry ``module.``."""
    torch.manual_seed(0)
    return nn.DataParallel(TinyNet())


def _qwen2(tie: bool) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
        tie_word_embeddings=tie))


def qwen2_tied() -> nn.Module:
    """``Qwen2ForCausalLM`` with ``lm_head.weight`` tied to ``model.embed_tokens.weight``."""
    return _qwen2(True)


def qwen2_untied() -> nn.Module:
    """``Qwen2ForCausalLM`` with its own ``lm_head.weight`` (``tie_word_embeddings=False``)."""
    return _qwen2(False)
