"""Cause rules for partial evidence: one key list only, a load report, a key a loader looked up.

When a text shows one side only, the key-set relation that would decide (a prefix, a rename) cannot
be computed. These rules read what is left (which modules the keys span, the class named in the
message, what the keys are called by library convention) and return candidates whose confidences
say how often that evidence alone points to each cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments
from ckpttools.ops.diagnose.prose_names import WRAPPER_SEGMENTS
from ckpttools.ops.diagnose.one_sided import (
    attention_names, first_key_unexpected, holder_prefix, inserted_layer, legacy_norm_missing,
    part_missing,
    part_prefix_cut,
    reparametrized_weight, whole_model_unexpected, wrapped_model_unexpected)
from ckpttools.ops.diagnose.fed_input import fed_count_head
from ckpttools.ops.diagnose.shapes import fed_inputs, head_named
from ckpttools.ops.diagnose.structure import rename_pairs, structure_pairs

# Output heads by naming convention (torchvision, timm, transformers, mmcv, detectron2), a
# segmentation head's classifier (mmseg's conv_seg), a network's final layer (final,
# final_layer, final_conv) and any module whose name ends in classifier (kpclassifier).
_HEAD_MODULE = re.compile(
    r"(^|\.)(head|heads|fc|classifier|cls|cls_head|logits|last_linear|score|qa_outputs|pooler"
    r"|lm_head|decode_head|auxiliary_head|cls_score|bbox_pred|fc_cls|fc_reg|output_layer"
    r"|classif\w*|pre_logits|projector|proj_head|\w+_?classifier|conv_seg|seg_head"
    r"|final|final_layer|final_conv)(\.|$)")
_HEAD_NORM = re.compile(r"(^|\.)fc_norm\.")
# Heads a pretraining checkpoint carries that a task model drops (BERT MLM/NSP, pooler, ...).
PRETRAIN_HEAD = re.compile(r"(^|\.)(cls|lm_head|pooler|predictions|seq_relationship|mlm|nsp"
                            r"|pre_logits|head|heads|fc|classifier|projector|vocab_\w+|generator"
                            r"|discriminator_predictions|lm_loss)(\.|$)")
_PROFILER = re.compile(r"(^|\.)(total_ops|total_params|__flops__|__params__)$")
_CONTAINER_LOOKUP = re.compile(r"^(model|state_dict|model_state_dict|net|network|params|weights"
                               r"|module|ema|g_ema|generator|netG|netD|model_ema|state|\w+_state_dict)$")
# Where a model's state_dict starts: a top-level parameter (it precedes every submodule's keys)
# or a first layer by the usual names, with every layer index at 0.
_FIRST_LAYER = re.compile(r"(^|\.)(conv1|conv_first|conv0|stem|embed\w*|\w*embeddings?|\w*_emb|patch_embed"
                          r"|tok_emb|wte|token_emb\w*|word_emb\w*"
                          r"|cls_token|pos_embed|input\w*|first\w*|inc|init\w*|layer0|features"
                          r"|module_list|model|backbone|encoder|body|net|blocks|layers)(\.|$)")
_WRAPPER_CLASSES = frozenset({"DataParallel", "DistributedDataParallel", "OptimizedModule",
                              "FullyShardedDataParallel"})


def _modules(keys: Iterable[str]) -> set[str]:
    return {k.rsplit(".", 1)[0] if "." in k else "" for k in keys}


def _tops(keys: Iterable[str]) -> set[str]:
    return {next((s for s in segments(k) if s not in WRAPPER_SEGMENTS), k) for k in keys}


def profiler_buffers(ev: Evidence) -> Finding | None:
    """Counters a FLOP profiler (thop, ptflops) registered on the model: ``total_ops``, ``total_params``."""
    keys = ev.missing + ev.unexpected
    hits = [k for k in keys if _PROFILER.search(k)]
    if not hits or len(hits) < 0.5 * len(keys):
        return None
    side = "missing" if hits[0] in ev.missing else "unexpected"
    return Finding("profiler_buffers", 0.93, frozenset(hits),
                   {"examples": hits[:3], "count": len(hits), "side": side})


def _is_head(keys: tuple[str, ...]) -> bool:
    mods = _modules(keys)
    return bool(keys) and len(mods) <= 6 and len(_tops(keys)) <= 2 and all(
        _HEAD_MODULE.search(k) for k in keys)


def new_task_head(ev: Evidence) -> Finding | None:
    """The model has a task head the checkpoint never had (a backbone or pretraining checkpoint).

    transformers reports this on every fine-tuning start ("newly initialized"); it is expected.
    From PyTorch it shows as only the head's keys missing, next to nothing or to a pretraining
    head in the checkpoint.
    """
    if ev.mismatched or ev.lookups:
        return None
    if not ev.missing:
        return _unused_pretraining_head(ev)
    # One top-level layer with weight and bias, nothing else missing: the last layer by shape of
    # the evidence even when its name is not a usual head name (proj, out, linear).
    lone_layer = (not ev.unexpected and not ev.truncated and len(_modules(ev.missing)) == 1
                  and "." not in next(iter(_modules(ev.missing)))
                  and {k.rsplit(".", 1)[-1] for k in ev.missing} == {"weight", "bias"})
    # the head's own norm (timm's and MAE's fc_norm, used with global pooling) is part of it
    head_keys = tuple(k for k in ev.missing if not _HEAD_NORM.search(k))
    if not ((_is_head(head_keys) and len(_tops(ev.missing)) <= 2) or lone_layer):
        return None
    if any(k.endswith(".weight") for k in ev.missing) and not any(
            k.endswith(".bias") for k in ev.missing) and len(ev.missing) == 1:
        return None  # one bias-free output weight: a tied head, not a new one
    pairs = ev.unexpected and (structure_pairs(ev.missing, ev.unexpected)
                               or rename_pairs(ev.missing, ev.unexpected))
    other_task = _other_task_parts(ev, {p[1] for p in pairs or ()})
    if pairs and not other_task:
        return None  # the head's keys moved or were renamed: the same head under other names
    pretrain = ev.unexpected and all(PRETRAIN_HEAD.search(k) for k in ev.unexpected)
    if ev.report:
        conf = 0.93 if not ev.unexpected or pretrain else 0.6
    elif not ev.unexpected:
        conf = 0.6 if ev.truncated or not _is_head(ev.missing) else 0.75
    elif pretrain:
        conf = 0.8
    elif other_task:
        conf = 0.72 if ev.truncated else 0.75  # by key sets alone: a candidate
    else:
        return None
    return Finding("new_task_head", conf, frozenset(ev.missing + ev.unexpected),
                   {"examples": list(ev.missing[:3]), "count": len(ev.missing),
                    "dropped": list(ev.unexpected[:3]), "report": ev.report,
                    "class_name": ev.class_name})


def _other_task_parts(ev: Evidence, paired: set[str]) -> bool:
    """Only a task head is missing and the checkpoint's extra keys are whole modules apart from
    it: the backbone loaded, so the file is the same backbone trained for another task (MAE's
    pretraining model: ``decoder_*``, ``mask_token``, its final ``norm``), not another model,
    whose file would leave the backbone's keys missing too. A head renamed pairs with one
    module (``paired``); two modules or more beyond it are more than a rename."""
    unpaired = _tops(k for k in ev.unexpected if k not in paired)
    return (bool(ev.unexpected) and len(ev.missing) <= 8 and len(unpaired) >= 2
            and not _tops(ev.missing) & _tops(ev.unexpected)
            and not any(_HEAD_NORM.search(k) for k in ev.unexpected))


def _unused_pretraining_head(ev: Evidence) -> Finding | None:
    """A load report that only lists the checkpoint's pretraining head as not used.

    transformers prints it when a pretraining checkpoint (MLM/NSP heads, a pooler) is loaded into
    a model without those heads (``AutoModel``, a task model): expected, nothing to fix.
    """
    if not (ev.unexpected and all(PRETRAIN_HEAD.search(k) for k in ev.unexpected)):
        return None
    # Not a report: PyTorch's list of one top-level head module's keys the model lacks (a backbone
    # or a model built without that head given the pretraining file); other code reads the same.
    # One key is no list (PyTorch 0.3 stops at the first unexpected key).
    one_head = len(ev.unexpected) >= 2 and len(_tops(ev.unexpected)) == 1 and _is_head(ev.unexpected)
    if not ev.report and not one_head:
        return None
    return Finding("new_task_head", 0.9 if ev.report else 0.6, frozenset(ev.unexpected),
                   {"examples": [], "count": 0, "dropped": list(ev.unexpected[:3]),
                    "report": ev.report, "class_name": ev.class_name})


def whole_model_missing(ev: Evidence) -> list[Finding]:
    """Only a missing list that spans the whole model: the checkpoint's own keys are not shown.

    Then every key of the model failed to match. In public threads that is most often a wrapper
    prefix on the checkpoint's keys, then a training checkpoint passed whole, then another model;
    the text cannot tell these apart, so all three come back as candidates.
    """
    if ev.unexpected or ev.mismatched or ev.lookups or ev.report or len(ev.missing) < 4:
        return []
    if len(_tops(ev.missing)) < 2 and not ev.truncated:
        return []
    if (ev.class_name or "") in _WRAPPER_CLASSES or _is_head(ev.missing):
        return []
    if not (starts_model(ev.missing[0]) or _spans_model(ev.missing)):
        return []  # the list starts inside the model: some submodules are new, not all
    keys = frozenset(ev.missing)
    facts = {"examples": list(ev.missing[:3]), "count": len(ev.missing), "one_sided": True}
    return [Finding("prefix_added", 0.5, keys, {**facts, "prefix": "module.", "infix": False,
                                                 "guessed": True}),
            Finding("wrapped_checkpoint", 0.3, keys, {**facts, "container": None,
                                                       "top_keys": ["state_dict", "epoch", "..."]}),
            Finding("optimizer_state_passed", 0.1, keys, {"examples": ["state", "param_groups"]}),
            Finding("wrong_model", 0.2, keys, {**facts, "missing": len(ev.missing), "unexpected": 0,
                                                "examples_missing": list(ev.missing[:3]),
                                                "examples_unexpected": []})]


def wrapper_model_missing(ev: Evidence) -> list[Finding]:
    """Only a missing list, a wrapper class named (``DataParallel``), its keys spanning the wrapped
    model from its start: a file without the wrapper's prefix is the prefix rule's reading, and a
    training dict or another model's file give the very same list; they are listed beside it."""
    if ev.unexpected or ev.mismatched or ev.lookups or ev.report or len(ev.missing) < 4:
        return []
    if (ev.class_name or "") not in _WRAPPER_CLASSES:
        return []
    inner = [k.partition(".")[2] for k in ev.missing if segments(k)[0] in WRAPPER_SEGMENTS]
    if len(inner) < len(ev.missing) or len(_tops(inner)) < 2 or not starts_model(inner[0]):
        return []
    keys = frozenset(ev.missing)
    facts = {"examples": list(ev.missing[:3]), "count": len(ev.missing), "one_sided": True}
    return [Finding("wrapped_checkpoint", 0.3, keys, {**facts, "container": None,
                                                       "top_keys": ["state_dict", "epoch", "..."]}),
            Finding("wrong_model", 0.2, keys, {**facts, "missing": len(ev.missing), "unexpected": 0,
                                                "examples_missing": list(ev.missing[:3]),
                                                "examples_unexpected": []})]


def _spans_model(keys: tuple[str, ...]) -> bool:
    """Three top-level modules or more missing, the list's first key at index 0 of every stack
    (``model0.0.weight``, ``actor.latent_pi.0.weight``): the model's keys from its start under
    names no list knows. New code adds a module or two; it does not rename every top module."""
    first = segments(keys[0])
    return (len(_tops(keys)) >= 3 and all("." in k for k in keys)
            and not any(p.isdigit() and p != "0" for p in first))


def starts_model(key: str) -> bool:
    parts = segments(key)
    if len(parts) == 1:
        return True
    if any(p.isdigit() and p != "0" for p in parts) or any(
            re.search(r"[A-Za-z_][2-9]$", p) for p in parts[:-1]):
        return False
    return bool(_FIRST_LAYER.search(".".join(parts[:-1])))


def container_lookup(ev: Evidence) -> list[Finding]:
    """A loader looked up a container entry (``KeyError: 'model'``) the file does not have.

    The code expects a training checkpoint of its own kind; the file is something else (a plain
    state_dict, or a checkpoint of another code base).
    """
    names = [k for k in ev.lookups if _CONTAINER_LOOKUP.match(k)]
    if not names or len(names) < len(ev.lookups):
        return []
    facts = {"missing": 0, "unexpected": 0, "examples_missing": [], "examples_unexpected": [],
             "lookup": names[0]}
    return [Finding("wrong_model", 0.6, frozenset(names), facts),
            Finding("wrapped_checkpoint", 0.3, frozenset(names),
                    {"container": names[0], "top_keys": [names[0]]})]


def key_lookup(ev: Evidence) -> list[Finding]:
    """A loader looked up one parameter key and failed: the layouts of code and file differ."""
    if not ev.lookups or ev.unexpected or ev.mismatched or container_lookup(ev):
        return []
    keys = frozenset(ev.missing)
    facts = {"missing": len(ev.missing), "unexpected": 0, "examples_missing": list(ev.missing[:3]),
             "examples_unexpected": []}
    return [Finding("model_code_changed", 0.45, keys, facts),
            Finding("wrong_model", 0.35, keys, facts)]


def cut_size_mismatch(ev: Evidence) -> list[Finding]:
    """Size mismatches named, their shapes cut from the paste (a title, a truncated line).

    Only the key is left: a head by name (``fc``, ``bbox_head``, ``embed``) is most often another
    number of classes or tokens, anything else another configuration; both stay candidates.
    """
    if not ev.cut_mismatches or ev.mismatched or ev.missing or ev.unexpected:
        return []
    keys = list(ev.cut_mismatches)
    head = Finding("head_size_mismatch", 0.3, frozenset(keys),
                   {"keys": keys, "checkpoint_size": None, "model_size": None, "vocab": False,
                    "padded": False})
    variant = Finding("architecture_variant", 0.3, frozenset(keys),
                      {"kind": "width", "count": len(keys), "examples": keys[:3], "ratio": 1.0,
                       "consistent": False})
    # A weight saved as torch.Size([0]) is a partitioned parameter's placeholder (a weight has
    # two axes or more; a layer built with 0 outputs keeps the others): the model's side is cut.
    empty = [k for k in ev.cut_empty if k.endswith(".weight")]
    if empty and len(empty) >= 0.5 * len(keys):
        return [Finding("partitioned_checkpoint", 0.75, frozenset(ev.cut_empty),
                        {"examples": empty[:3], "count": len(ev.cut_empty), "side": "checkpoint"}),
                replace(head, confidence=0.5), variant]
    if all(head_named(k) for k in keys):
        return [replace(head, confidence=0.65), variant]
    # no head's name: another configuration or another version of the code that builds the layer
    # (on the real sets, 4 and 3 of 7 such texts); the code's reading names the version to use
    code = Finding("model_code_changed", 0.4, frozenset(keys),
                   {"missing": 0, "unexpected": 0, "examples_missing": [], "examples_unexpected": [],
                    "resized": keys[:2]})
    return [replace(variant, confidence=0.5), code, head]


def told_head(ev: Evidence) -> list[Finding]:
    """A head's two sizes told in a sentence, no key shown: a candidate, without code."""
    if not ev.told_head_sizes or not ev.is_empty:
        return []
    ckpt, model = ev.told_head_sizes
    return [Finding("head_size_mismatch", 0.6, frozenset(),
                    {"keys": [], "checkpoint_size": ckpt, "model_size": model, "vocab": False,
                     "padded": False})]


def unlisted_report(ev: Evidence) -> list[Finding]:
    """transformers' report of unused weights without its key list ("Some weights of the model
    checkpoint at t5-large were not used when initializing T5EncoderModel"): what it reports on
    every load into another task's class or a part of the checkpoint's model (an encoder
    alone). The list decides, so it stays a candidate. (Its "newly initialized" report may be
    of resized heads, "because the shapes did not match": not read without its list.)"""
    if not ev.unlisted_unused or not ev.is_empty or ev.lookups or ev.cut_mismatches:
        return []
    return [Finding("new_task_head", 0.6, frozenset(),
                    {"examples": [], "count": 0, "dropped": [], "report": True,
                     "class_name": ev.class_name})]


def unnamed_size(ev: Evidence) -> list[Finding]:
    """PyTorch 0.1/0.2's "inconsistent tensor size" from ``own_state[name].copy_(param)``: some
    tensor of the file has another size than the model's, neither named nor measured. Another
    configuration (a width, a hidden size) or another number of classes: candidates, no code."""
    if not ev.unnamed_size or not ev.is_empty:
        return []
    setting = ("a tensor of the file has another size than the model's, and PyTorch 0.1/0.2 "
               "names neither the key nor the shapes: a width, a hidden size or the number of "
               "classes differs")
    return [Finding("architecture_variant", 0.35, frozenset(), {"kind": "config", "setting": setting,
                                                                "examples": []}),
            Finding("head_size_mismatch", 0.3, frozenset(),
                    {"keys": [], "checkpoint_size": None, "model_size": None, "vocab": False,
                     "padded": False})]


def partial_findings(ev: Evidence) -> list[Finding]:
    """Every partial-evidence finding for ``ev`` (rule order, not ranked)."""
    out = [f for rule in (profiler_buffers, new_task_head) if (f := rule(ev)) is not None]
    starts = bool(ev.unexpected) and starts_model(ev.unexpected[0])
    one_sided = (part_missing(ev) + part_prefix_cut(ev) + inserted_layer(ev)
                 + reparametrized_weight(ev) + legacy_norm_missing(ev) + wrapped_model_unexpected(ev)
                 + holder_prefix(ev)
                 + (whole_model_unexpected(ev, starts) or first_key_unexpected(ev, starts)))
    attention = attention_names(ev)
    # projections alone are not the whole model
    whole = [] if attention else whole_model_missing(ev) + wrapper_model_missing(ev)
    return (out + whole + attention + one_sided + container_lookup(ev) + key_lookup(ev)
            + cut_size_mismatch(ev) + told_head(ev) + unlisted_report(ev) + unnamed_size(ev)
            + [f for f in (fed_count_head(ev, fed_inputs(ev)),) if f is not None])
