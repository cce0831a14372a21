"""Generated diagnose cases from transformers models built from tiny configs (no download).

The texts are what transformers itself prints: its LOAD REPORT (newly initialised heads, size
mismatches) from ``from_pretrained`` on a real ``save_pretrained`` folder, and PyTorch's error when
a transformers model's state_dict is loaded wrapped, untied or into another model.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tests.ops.diagnose.generated_corpus import GeneratedCase, load_error, presentations

_BERT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=32, max_position_embeddings=32)
_GPT2 = dict(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)


def _report(load: Callable[[], Any]) -> str:
    """What transformers logs (and raises) while ``load`` runs."""
    import transformers

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = transformers.logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        load()
    except RuntimeError as e:
        buf.write(f"\nRuntimeError: {e}\n")
    finally:
        logger.removeHandler(handler)
    return buf.getvalue()


def _texts() -> dict[str, tuple[str, str]]:
    from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel,
                              GPT2Config, GPT2LMHeadModel, GPT2Model)

    torch.manual_seed(0)
    bert, gpt2 = BertConfig(**_BERT), GPT2Config(**_GPT2)
    out: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory() as mlm, tempfile.TemporaryDirectory() as cls3:
        BertForMaskedLM(bert).save_pretrained(mlm)
        out["bert-mlm_to_classifier"] = ("new_task_head", _report(
            lambda: BertForSequenceClassification.from_pretrained(mlm, num_labels=2)))
        BertForSequenceClassification(BertConfig(**_BERT, num_labels=3)).save_pretrained(cls3)
        out["bert-num_labels"] = ("head_size_mismatch", _report(
            lambda: BertForSequenceClassification.from_pretrained(cls3, num_labels=5)))
    sd = dict(BertModel(bert).state_dict())
    out["bert-dataparallel"] = ("prefix_added", load_error(BertModel(bert), {f"module.{k}": v for k, v in sd.items()}))
    out["bert-deeper"] = ("architecture_variant", load_error(BertModel(BertConfig(**{**_BERT, "num_hidden_layers": 4})), sd))
    out["bert-into-gpt2"] = ("wrong_model", load_error(GPT2Model(gpt2), sd))
    lm = {k: v for k, v in GPT2LMHeadModel(gpt2).state_dict().items() if k != "lm_head.weight"}
    out["gpt2-tied_lm_head"] = ("tied_weights", load_error(GPT2LMHeadModel(gpt2), lm))
    out["bert-training_dict"] = ("wrapped_checkpoint", load_error(BertModel(bert), {"model": sd, "epoch": 2}))
    return out


def generate_transformers() -> list[GeneratedCase]:
    """Every transformers case in every presentation."""
    cases = []
    for name, (label, text) in _texts().items():
        for how, shown, decidable in presentations(text):
            cases.append(GeneratedCase(f"{name}-{how}", label, shown, decidable))
    return cases
