"""Generated diagnose cases from transformers models built from tiny configs (no download).

The texts are what transformers itself prints: its LOAD REPORT (newly initialised heads, unused
pretraining heads, size mismatches) from ``from_pretrained`` on a real ``save_pretrained`` folder,
the same loads in transformers 4.x wording (its warning strings over the real key lists), and
PyTorch's error when a transformers model's state_dict is loaded wrapped, untied or into another model.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tests.ops.diagnose.gen_presentations import transformers4_report
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


def _v4_lists(source: nn.Module, target: nn.Module) -> tuple[list[str], list[str], list]:
    """What transformers 4.x compares in ``from_pretrained``: the base-model prefix is matched
    first (a task checkpoint loads into the bare model and the other way round)."""
    src, own = dict(source.state_dict()), dict(target.state_dict())
    prefix = target.base_model_prefix + "."
    if not any(k.startswith(prefix) for k in own) and any(k.startswith(prefix) for k in src):
        src = {k.removeprefix(prefix): v for k, v in src.items()}
    elif any(k.startswith(prefix) for k in own) and not any(k.startswith(prefix) for k in src):
        src = {(k if k.split(".")[0] in {j.split(".")[0] for j in own} else prefix + k): v
               for k, v in src.items()}
    ignore = ("position_ids",)
    missing = [k for k in own if k not in src and not k.endswith(ignore)]
    unexpected = [k for k in src if k not in own and not k.endswith(ignore)]
    mismatched = [(k, tuple(src[k].shape), tuple(v.shape)) for k, v in own.items()
                  if k in src and src[k].shape != v.shape]
    return missing, unexpected, mismatched


def _v4_reports(bert: Any) -> dict[str, tuple[str, str]]:
    """transformers 4.x wording of the loads whose 5.x LOAD REPORT ``_texts`` records."""
    from transformers import BertForPreTraining, BertForSequenceClassification, BertModel

    pre, cls3 = BertForPreTraining(bert), BertForSequenceClassification(type(bert)(**_BERT, num_labels=3))
    cases = {"bert4-pretraining_to_classifier": ("new_task_head", pre, BertForSequenceClassification(bert)),
             "bert4-pretraining_to_bare": ("new_task_head", pre, BertModel(bert)),
             "bert4-classifier_to_bare": ("new_task_head", cls3, BertModel(bert)),
             "bert4-num_labels": ("head_size_mismatch", cls3,
                                  BertForSequenceClassification(type(bert)(**_BERT, num_labels=5)))}
    return {name: (label, transformers4_report(type(target).__name__, "./checkpoint-500",
                                               *_v4_lists(source, target)))
            for name, (label, source, target) in cases.items()}


def _texts() -> dict[str, tuple[str, str]]:
    from transformers import (BertConfig, BertForMaskedLM, BertForPreTraining,
                              BertForSequenceClassification, BertModel,
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
    with tempfile.TemporaryDirectory() as pre, tempfile.TemporaryDirectory() as cls2:
        BertForPreTraining(bert).save_pretrained(pre)
        out["bert-pretraining_to_bare"] = ("new_task_head", _report(lambda: BertModel.from_pretrained(pre)))
        BertForSequenceClassification(bert).save_pretrained(cls2)
        out["bert-classifier_to_bare"] = ("new_task_head", _report(lambda: BertModel.from_pretrained(cls2)))
    return {**out, **_v4_reports(bert)}


def generate_transformers() -> list[GeneratedCase]:
    """Every transformers case in every presentation."""
    cases = []
    for name, (label, text) in _texts().items():
        for how, shown, decidable in presentations(text):
            cases.append(GeneratedCase(f"{name}-{how}", label, shown, decidable))
    return cases
