"""Cause rules read from message formats, the class a message names and libraries' key conventions.

The key-set rules (:mod:`causes`, :mod:`structure`) read relations between the two key lists.
These rules read what those lists do not carry: the wrapper class that produced a key's prefix,
the task head a transformers class name implies, the layout torchvision's DenseNet used before
0.2.1, the parameters a ViT registers without a ``weight``/``bias`` leaf, a class count fed back
into a decoder's input, a width told by a norm's statistics, the modules a super-resolution
network sizes by its scale factor, a top-level container's name.
:func:`revise` lowers the findings of the generic rules that such a relation contradicts;
:func:`convention_findings` adds the findings the relations support.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ckpttools.ops.diagnose.evidence import ShapeMismatch
from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments
from ckpttools.ops.diagnose.prose_names import WRAPPER_SEGMENTS
from ckpttools.ops.diagnose.partial import PRETRAIN_HEAD, starts_model
from ckpttools.ops.diagnose.structure import top_module

_WRAPPER_PREFIX = {"DataParallel": "module.", "DistributedDataParallel": "module.",
                   "OptimizedModule": "_orig_mod.", "FullyShardedDataParallel": "_fsdp_wrapped_module."}
# Parameters registered on a module without a weight/bias leaf, by timm/ViT/CLIP/DETR naming:
# learned tokens, positional and query tables, CLIP's logit scale and projections.
_NAMED_PARAM = re.compile(r"(^|\.)(\w*_token|\w*pos_embed\w*|\w*_embed(ding)?s?|positional_embedding"
                          r"|logit_scale|\w*_projection|relative_position_bias_table|query_embed"
                          r"|level_embed|absolute_pos_embed)$")
# weight_norm's two parameters (torch.nn.utils.weight_norm): learned, not buffers.
_WEIGHT_NORM = frozenset({"weight_g", "weight_v"})
# torchvision < 0.2.1 named a DenseNet layer's parts norm.1/relu.1/conv.1 (norm1, ... since);
# torchvision's own densenet loader maps them with this pattern.
_OLD_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.((?:weight|bias|running_mean"
                           r"|running_var|num_batches_tracked))$")
# transformers task classes whose head is created for the task (never in a base checkpoint).
_TASK_CLASS = re.compile(r"For(Sequence|Token|Image|Audio|Video|MultipleChoice|Multiple_Choice)?"
                         r"(Classification|QuestionAnswering|MultipleChoice|ObjectDetection"
                         r"|SemanticSegmentation|CTC|FrameClassification|XVector|Regression)$")
# Super-resolution networks (EDSR, RCAN, SwinIR, BasicSR) size these modules by the scale factor
# (EDSR's upsampler is the first layer of its ``tail``).
_UPSAMPLER = re.compile(r"^(upsample\w*|upsampler|upscale\w*|up_sample\w*|pixel_shuffle\w*|tail)$")
# A learned table over time steps or frames: its rows are a configured length, not a count.
_TIME_TABLE = re.compile(r"(^|[._])(time|temporal|frame|temp)_?(embed\w*|emb|pos\w*|table)([._]|$)")


def _one_axis(m: ShapeMismatch) -> int | None:
    c, s = m.checkpoint_shape, m.model_shape
    diff = [i for i, (a, b) in enumerate(zip(c, s)) if a != b] if len(c) == len(s) else []
    return diff[0] if len(diff) == 1 else None


def _wrapper_inner(ev: Evidence) -> bool:
    """Missing keys only, under the prefix of the wrapper class the message names, all in one
    submodule that is not where a model's keys start: the model's own keys, not a prefix the file
    lacks.

    A checkpoint without ``module.`` misses every key of a DataParallel model, its first layer
    first; a list that starts inside the model (``module.representation.0``) means the earlier
    keys loaded, so the prefix is right and those modules are new.
    """
    prefix = _WRAPPER_PREFIX.get(ev.class_name or "")
    if prefix is None or ev.unexpected or ev.mismatched or ev.lookups or not ev.missing:
        return False
    if not all(k.startswith(prefix) for k in ev.missing):
        return False
    inner = [".".join(s for s in segments(k[len(prefix):]) if s not in WRAPPER_SEGMENTS)
             for k in ev.missing]
    # One submodule, not a first layer: several top-level modules read as the whole model.
    return len({segments(k)[0] for k in inner}) == 1 and not starts_model(inner[0])


_REPARAM = re.compile(r"^(.*)\.(weight_(?:orig|u|v|g)|parametrizations\.weight\.original\d?)$")


def _whole_layer_absent(f: Finding, ev: Evidence) -> bool:
    """weight_norm/spectral_norm layers that the other side lacks altogether: their bias is on the
    same side, or the other side, shown, has none of their module paths (indices moved). A
    reparametrization change keeps the layer's path and its bias on both sides."""
    for side, other in ((ev.missing, ev.unexpected), (ev.unexpected, ev.missing)):
        layers = {m.group(1) for k in side if k in f.explains and (m := _REPARAM.match(k))}
        if not layers:
            continue
        if any(k.rpartition(".")[0] in layers and k.endswith(".bias") for k in side):
            return True
        if other and not any(k.startswith(layer + ".") for k in other for layer in layers):
            return True
    return False


def _weight_norm_one_side(f: Finding, ev: Evidence) -> bool:
    """Only weight_norm parameters on one side: the other side (a plain ``weight``, the
    parametrizations' ``original0/1``, or other indices) decides, and it is not shown."""
    leaves = {k.rpartition(".")[2] for k in f.explains}
    return bool(leaves) and leaves <= _WEIGHT_NORM and not (ev.missing and ev.unexpected)


def count_fed_back(ev: Evidence) -> list[ShapeMismatch]:
    """A class count that changed by d in a head's rows and by the same d on another layer's input
    axis (an attention decoder's one-hot of the previous class, a CTC-LM's class embedding).

    A width change scales every axis by one ratio; a count fed back shifts each by the same
    difference, so the ratios differ while the difference stays.
    """
    mm = [m for m in ev.mismatched if _one_axis(m) is not None]
    if len(mm) < 2 or len(mm) != len(ev.mismatched):
        return []
    axes = [_one_axis(m) or 0 for m in mm]
    deltas = {m.checkpoint_shape[a] - m.model_shape[a] for m, a in zip(mm, axes)}
    ratios = {round(m.checkpoint_shape[a] / max(1, m.model_shape[a]), 4) for m, a in zip(mm, axes)}
    if len(deltas) != 1 or len(ratios) < 2 or 0 not in axes or not any(axes):
        return []
    return mm


_NORM_STAT = re.compile(r"(running_mean|running_var|(^|\.)(bn|norm|ln|gn)\w*\.(weight|bias))$")


def feeds_norm(ev: Evidence) -> bool:
    """A weight's rows changed together with the statistics of a norm layer: the changed size is
    a feature width that a BatchNorm/LayerNorm normalises; a class count is not normalised."""
    rows = [m for m in ev.mismatched if len(m.model_shape) >= 2 and _one_axis(m) == 0]
    norms = [m for m in ev.mismatched if len(m.model_shape) == 1 and _NORM_STAT.search(m.key)]
    return bool(rows and norms)


def outputs_only(ev: Evidence) -> list[ShapeMismatch]:
    """Several weights whose rows alone changed, to the same size, with their biases or per-channel
    terms (``[1, C, 1, 1]``) and no norm: a size produced by parallel output layers (one per
    feature level) and consumed by none shown, which is a count, not a width."""
    mm = list(ev.mismatched)
    weights = [m for m in mm if len(m.model_shape) >= 2 and m.model_shape[0] > 1]
    if len(weights) < 2 or feeds_norm(ev) or any(_one_axis(m) != 0 for m in weights):
        return []
    sizes = {(m.checkpoint_shape[0], m.model_shape[0]) for m in weights}
    if len(sizes) != 1 or len({m.model_shape[1:] for m in weights}) < 2:
        return []  # one size produced, read from inputs of several widths (several levels)
    produced = sizes.pop()[0]

    def per_channel(m: ShapeMismatch) -> bool:  # a bias, or a [1, C, 1, 1] term on the channels
        axis = _one_axis(m)
        return axis is not None and m.checkpoint_shape[axis] == produced and sum(
            d > 1 for d in m.model_shape) == 1
    return mm if all(per_channel(m) for m in mm if m not in weights) else []


def _resized_elsewhere(f: Finding, ev: Evidence) -> bool:
    """Modules moved (``fc`` -> ``fc.filter``) and, in other top-level modules, tensors of another
    size: two kinds of difference, which another variant of the family (another class) shows as
    well as a code change. Shifted indices resize layers inside the moved module: not this."""
    moved = {top_module(k) for pair in f.facts.get("moved", []) for k in pair}
    return bool(moved and ev.mismatched and not moved & {top_module(m.key) for m in ev.mismatched})


def revise(findings: list[Finding], ev: Evidence) -> list[Finding]:
    """The generic rules' findings, lowered or dropped where a relation above contradicts them."""
    out = []
    fed_back = bool(count_fed_back(ev)) or bool(outputs_only(ev))
    task_head = bool(_task_head_report(ev))
    for f in findings:
        if f.label == "prefix_missing" and _wrapper_inner(ev):
            f = replace(f, confidence=min(f.confidence, 0.45))
        elif f.label == "version_buffers" and _whole_layer_absent(f, ev):
            f = replace(f, confidence=min(f.confidence, 0.45))  # the fallbacks read its keys
        elif f.label == "version_buffers" and _weight_norm_one_side(f, ev):
            f = replace(f, confidence=min(f.confidence, 0.6))
        elif f.label == "version_buffers" and f.explains and all(
                _NAMED_PARAM.search(k) for k in f.explains):
            continue  # learned tokens and tables: parameters the other code does not have
        elif f.label == "architecture_variant" and fed_back and f.confidence >= 0.7:
            f = replace(f, confidence=0.7)
        elif f.label == "model_code_changed" and f.confidence >= 0.8 and _resized_elsewhere(f, ev):
            f = replace(f, confidence=0.7)
        elif f.label in ("renamed_keys", "model_code_changed") and task_head and f.confidence >= 0.6:
            f = replace(f, confidence=0.6)  # a base model's head unused, the task's head new
        elif f.label == "head_size_mismatch" and feeds_norm(ev) and f.confidence >= 0.6:
            f = replace(f, confidence=0.6)
        out.append(f)
    return out


def _norm_width(ev: Evidence) -> list[Finding]:
    """A width change told by a weight's rows and its norm's statistics (a pruned or thinned
    network, another channel count), which the head rule reads as a count."""
    if not feeds_norm(ev) or not all(_one_axis(m) is not None for m in ev.mismatched):
        return []
    keys = [m.key for m in ev.mismatched]
    return [Finding("architecture_variant", 0.7, frozenset(keys),
                    {"kind": "width", "count": len(keys), "examples": keys[:3], "ratio": 1.0,
                     "consistent": False})]


_FIRST_LAYER = re.compile(r"^(?:module\.)?[A-Za-z_]\w*\.0\.weight$")  # a top module's first layer


def _fed_back_head(ev: Evidence) -> list[Finding]:
    mm = count_fed_back(ev) or outputs_only(ev)
    rows = [m for m in mm if _one_axis(m) == 0]
    if not rows:
        return []
    c, m = rows[0].checkpoint_shape[0], rows[0].model_shape[0]
    # Fed back into the network's first layer, the count is what the model reads as data (the
    # state a dynamics or autoregressive model predicts and reads back): a setting, not classes,
    # which a decoder feeds to a later cell beside its hidden state.
    conf = 0.6 if any(_FIRST_LAYER.match(x.key) for x in mm if _one_axis(x) == 1) else 0.75
    return [Finding("head_size_mismatch", conf, frozenset(x.key for x in mm),
                    {"keys": [x.key for x in rows], "checkpoint_size": c, "model_size": m,
                     "vocab": False, "padded": False})]


def _task_head_report(ev: Evidence) -> list[Finding]:
    """transformers reports a task class's head (``score``, ``classifier``) as newly initialized:
    the task head of a model built from a base checkpoint, bias-free or not."""
    if not (ev.report and ev.missing and not ev.mismatched):
        return []
    if not all(PRETRAIN_HEAD.search(k) for k in ev.unexpected):
        return []  # only the base checkpoint's own head (lm_head, cls) may be left unused
    if not _TASK_CLASS.search(ev.class_name or "") or len({k.rpartition(".")[0] for k in ev.missing}) > 4:
        return []
    return [Finding("new_task_head", 0.9, frozenset(ev.missing),
                    {"examples": list(ev.missing[:3]), "count": len(ev.missing),
                     "dropped": list(ev.unexpected[:3]), "report": True, "class_name": ev.class_name})]


def _old_densenet(ev: Evidence) -> list[Finding]:
    """Keys in torchvision's DenseNet layout before 0.2.1 (``denselayer1.norm.1.weight``)."""
    keys = ev.missing + ev.unexpected
    old = [(k, m) for k in keys if (m := _OLD_DENSENET.match(k))]
    if not old or len(old) < 0.5 * len(keys):
        return []
    renames = sorted({(f"{m.group(1).rpartition('.')[2]}.{m.group(2)}",
                       f"{m.group(1).rpartition('.')[2]}{m.group(2)}") for _, m in old})
    new = {f"{m.group(1)}{m.group(2)}.{m.group(3)}" for _, m in old}
    # The new name of the same layer shown too: the rename is seen, not only the old layout.
    conf = 0.95 if new & set(keys) else 0.8
    return [Finding("renamed_keys", conf, frozenset(keys),
                    {"renames": [list(r) for r in renames], "count": len(old),
                     "examples": [k for k, _ in old[:3]]})]


def _upsampler_only(ev: Evidence) -> list[Finding]:
    """Every key shown inside the upsampling module of a super-resolution network: the model was
    built for another scale factor (x2 has one conv + pixel-shuffle stage, x4 two, x3 another)."""
    keys = ev.missing + ev.unexpected
    if ev.mismatched or ev.lookups or not keys:
        return []
    tops = {top_module(k) for k in keys}
    if len(tops) != 1 or not _UPSAMPLER.match(tops.pop()) or not all("." in k for k in keys):
        return []
    where = ("in both, with other layers" if ev.missing and ev.unexpected else
             "in the model only" if ev.missing else "in the checkpoint only")
    setting = (f"upsampling layers ({keys[0].rsplit('.', 1)[0]}, ...) exist {where}: the model was "
               "built for another scale factor")
    return [Finding("architecture_variant", 0.7, frozenset(keys),
                    {"kind": "config", "setting": setting, "examples": list(keys[:3])})]


# Auxiliary heads a training option adds (torchvision's aux_logits: Inception3.AuxLogits,
# GoogLeNet.aux1/aux2; aux_loss: DeepLab's aux_classifier; mmseg's auxiliary_head)
_AUXILIARY = re.compile(r"^(AuxLogits|aux\d*|aux_\w+|auxlayer\w*|auxiliary_\w+|\w+_aux)$", re.I)


def _auxiliary_only(ev: Evidence) -> list[Finding]:
    """Every key shown on one side, inside auxiliary heads: the model was built with or without
    the auxiliary outputs, unlike the checkpoint's training (an option such as ``aux_logits``).
    A head the file lacks may be new code as well: a candidate then."""
    keys = ev.unexpected or ev.missing
    if ev.mismatched or ev.lookups or not keys or (ev.missing and ev.unexpected):
        return []
    tops = {top_module(k) for k in keys}
    if len(tops) > 2 or not all(_AUXILIARY.match(t) for t in tops) or not all("." in k for k in keys):
        return []
    if ev.missing:
        setting = (f"auxiliary heads ({', '.join(sorted(tops))}) exist in the model only: it was "
                   "built with auxiliary outputs (aux=True, aux_logits) the checkpoint was trained "
                   "without; build it without them, or load with strict=False and leave them untrained")
        return [Finding("architecture_variant", 0.65, frozenset(keys),
                        {"kind": "config", "setting": setting, "examples": list(keys[:3])}),
                Finding("model_code_changed", 0.5, frozenset(keys),
                        {"missing": len(keys), "unexpected": 0, "examples_missing": list(keys[:3]),
                         "examples_unexpected": []})]
    setting = (f"auxiliary heads ({', '.join(sorted(tops))}) exist in the checkpoint only: the model "
               "was built without the auxiliary outputs it was trained with (aux_logits, aux_loss); "
               "build it with them, or leave those keys out")
    return [Finding("architecture_variant", 0.7, frozenset(keys),
                    {"kind": "config", "setting": setting, "examples": list(keys[:3])})]


# Learned object queries (DETR's num_queries, Mask2Former's query_feat, BLIP-2's query_tokens):
# one row per query, a configured count of the architecture, not of the classes
_QUERY_TABLE = re.compile(r"(^|\.)(query_embed\w*|query_feat|query_pos|query_tokens|queries"
                          r"|object_queries|query_embedding\w*)(\.weight)?$")


def _query_table(ev: Evidence) -> list[Finding]:
    """Every mismatch a learned query table whose count of queries differs: num_queries."""
    mm = [m for m in ev.mismatched if _QUERY_TABLE.search(m.key) and _one_axis(m) is not None
          and m.model_shape[-1] == m.checkpoint_shape[-1]]
    if not mm or len(mm) != len(ev.mismatched):
        return []
    m = mm[0]
    axis = _one_axis(m) or 0
    setting = (f"{m.key} holds {m.checkpoint_shape[axis]} learned queries in the checkpoint and "
               f"{m.model_shape[axis]} in the model: another number of queries (num_queries), which "
               "the checkpoint's training fixed; keep its count, or train the queries anew")
    return [Finding("architecture_variant", 0.75, frozenset(x.key for x in mm),
                    {"kind": "config", "setting": setting, "examples": [x.key for x in mm[:3]]})]


def _time_table(ev: Evidence) -> list[Finding]:
    """Every mismatch a time or frame table whose rows differ: a configured length (max frames)."""
    mm = [m for m in ev.mismatched if _TIME_TABLE.search(m.key) and _one_axis(m) == 0]
    if not mm or len(mm) != len(ev.mismatched):
        return []
    m = mm[0]
    setting = (f"{m.key} has {m.checkpoint_shape[0]} rows in the checkpoint and {m.model_shape[0]} "
               "in the model: another maximum length (frames, time steps)")
    return [Finding("architecture_variant", 0.75, frozenset(x.key for x in mm),
                    {"kind": "config", "setting": setting, "examples": [x.key for x in mm[:3]]})]


def _same_shape_copy(ev: Evidence) -> list[Finding]:
    """``While copying the parameter named ...`` with the same dimensions on both sides: the copy
    failed for another reason than size. torch names the reason after the shapes ("Copying from
    quantized Tensor to non-quantized Tensor", "Cannot copy out of meta tensor"); cut before it,
    a quantized file in a float (or QAT) model is the usual one, a candidate only."""
    same = [m for m in ev.mismatched if m.checkpoint_shape == m.model_shape]
    if not same or len(same) != len(ev.mismatched) or ev.missing or ev.unexpected:
        return []
    return [Finding("adapter_or_quantization", 0.6, frozenset(m.key for m in same),
                    {"examples": [m.key for m in same[:3]], "count": len(same), "quantized": True,
                     "side": "resized"})]


# A dotless name that may be a parameter on the model's root (CLIP's logit_scale, ViT's cls_token).
_ROOT_PARAM = re.compile(r"weight|bias|scale|token|embed|pos|proj|temp|alpha|beta|gamma|logit|mask"
                         r"|query|prompt|anchor|mean|std|var|codebook|prior", re.I)


def _top_level_container(ev: Evidence) -> list[Finding]:
    """A few unexpected names without a dot and no parameter-like word, the rest not shown: the
    file is a dict whose entries hold the state_dict (``params``, ``params_ema``, ``g``); torch
    names a nested dict by its top-level key."""
    keys = ev.unexpected
    if ev.missing or ev.mismatched or ev.lookups or ev.report or not 1 <= len(keys) <= 3:
        return []
    if any("." in k or _ROOT_PARAM.search(k) or _NAMED_PARAM.search(k) for k in keys):
        return []
    facts = {"missing": 0, "unexpected": len(keys), "examples_missing": [],
             "examples_unexpected": list(keys)}
    return [Finding("wrapped_checkpoint", 0.6, frozenset(keys),
                    {"container": keys[0] if len(keys) == 1 else None, "top_keys": sorted(keys)}),
            Finding("wrong_model", 0.3, frozenset(keys), facts)]


def convention_findings(ev: Evidence) -> list[Finding]:
    """Every finding the relations of this module support (rule order, not ranked)."""
    rules = (_fed_back_head, _norm_width, _task_head_report, _old_densenet, _upsampler_only,
             _auxiliary_only, _query_table, _time_table, _same_shape_copy, _top_level_container)
    return [f for rule in rules for f in rule(ev)]
