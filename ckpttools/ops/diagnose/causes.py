"""Cause rules for ``load_state_dict`` failures: recognise, score and rank.

Every rule reads one :class:`Evidence` (built from an error text or from a checkpoint and a
model) and returns a :class:`Finding` with a confidence in 0..1, the keys it explains and the
facts the explanation and the fix need. Specific rules run first; the catch-all rules
(model code changed, wrong model, another depth) only look at the keys nobody explained.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from ckpttools.ops.diagnose.shapes import (
    another_depth, architecture_variant, head_size_mismatch, sharded_tensors)
from ckpttools.ops.diagnose.settings_reading import several_settings
from ckpttools.ops.diagnose.structure import (
    model_code_changed, numbered_copies, part_checkpoint, part_of_model, prefix_matches,
    renamed_keys, residual,
    strip_wrappers, top_module, wrong_model)
from ckpttools.ops.diagnose.conventions import convention_findings, revise
from ckpttools.ops.diagnose.evidence import ShapeMismatch
from ckpttools.ops.diagnose.adapters import adapter_or_quantization
from ckpttools.ops.diagnose.calibration import calibrate, possible
from ckpttools.ops.diagnose.one_sided import PART_NAMES
from ckpttools.ops.diagnose.partial import partial_findings
from ckpttools.ops.diagnose.residue import head_beside_new_modules, head_left, with_new_modules
from ckpttools.ops.diagnose.norm_kind import norm_kind
from ckpttools.ops.diagnose.shape_readings import lone_norm_code, lone_table_code
from ckpttools.ops.diagnose.projections import fused_projection
from ckpttools.ops.diagnose.thin_shapes import anchor_count, input_features
from ckpttools.ops.diagnose.layer_roles import (
    channels_swapped, concatenated_part, layer_of_another_kind, layers_bias_flag, recurrent_kind,
    swapped_channels)
from ckpttools.ops.diagnose.evidence import (
    Evidence, Finding, numel as _numel, segments as _segments, zero_count_keys)
from ckpttools.ops.diagnose.prose_names import WRAPPER_SEGMENTS
from ckpttools.ops.diagnose.vocab_outputs import revise_vocab, vocab_findings
from ckpttools.ops.diagnose.task_files import task_model_file

_WRAPPER_CLASSES = ("DataParallel", "DistributedDataParallel", "OptimizedModule",
                    "FullyShardedDataParallel")
TRAINING_KEYS = frozenset({
    "epoch", "epochs", "step", "steps", "global_step", "iteration", "iter", "iters", "optimizer",
    "optimizer_state_dict", "optimizers", "scheduler", "lr_scheduler", "lr_schedulers",
    "scheduler_state_dict", "args", "config", "cfg", "hparams", "hyper_parameters", "best_acc",
    "best_acc1", "best_prec1", "best_loss", "best_score", "previous_best", "arch", "amp",
    "scaler", "grad_scaler", "meta", "callbacks", "loops", "pytorch-lightning_version",
    "state_dict", "model_state_dict", "model", "net", "network", "params", "weights", "module",
    "ema", "model_ema", "state_dict_ema", "train_loss", "val_loss", "loss", "rng_state"})
_CONTAINER = re.compile(r"^(state_dict|model_state_dict|model|net|network|module|params|weights"
                        r"|\w*net\w*_state_dict|\w*model\w*_state_dict|\w+_state_dict)$")
_NOT_WEIGHTS = re.compile(r"optim|sched|scaler|ema|lr_")
# Training bookkeeping by name shape, for the many spellings (iterations, opt_g, epoch_idx, best_miou).
_TRAINING_NAME = re.compile(r"^(epoch|iter|step|global_step|best|lr|opt|optim|sched|scaler|loss"
                            r"|train|val|amp|seed|rng|acc|accuracy|prec|top|miou|metric|score)"
                            r"(_?[a-z0-9]+)*$", re.I)
# Optimizer entries of a GAN or multi-optimizer training file: optimG, optim_D, opt_g, optimizer_G.
_OPTIMIZER_NAME = re.compile(r"^(optim|optimizer|opt)_?[A-Za-z0-9]*$")
_BUFFER = re.compile(
    r"(^|[._])(num_batches_tracked|position_ids|token_type_ids|inv_freq|masked_bias|attn\.bias"
    r"|relative_position_index|attn_mask|attention_mask|causal_mask|_float_tensor|freqs_cis"
    r"|cos_cached|sin_cached|rotary_emb\.inv_freq"
    # spectral norm's power-iteration state, saved as weight_orig/weight_u/weight_v since
    # torch.nn.utils.spectral_norm and as parametrizations.* since its parametrize version
    r"|weight_orig|weight_u|weight_v|parametrizations\.weight\.original\d?"
    r"|parametrizations\.weight\.\d+\._[uv])$")
_PARAM_LEAF = re.compile(r"(^|[._])(weight|bias|gamma|beta|running_mean|running_var|weight_[gv]"
                         r"|in_proj_weight|in_proj_bias|lora_[ABab]"
                         r"|(weight|bias)_[ih]h_l\d+(_reverse)?)s?$")  # nn.LSTM/GRU/RNN parameters
# The layer's module path before a reparametrized weight: spectral_norm (weight_orig/u/v),
# weight_norm (weight_g/v) and torch.nn.utils.parametrizations (parametrizations.weight.original0/1).
_SPECTRAL = re.compile(r"\.(weight_(orig|u|v|g)|parametrizations\.weight\.(original\d?|\d+\._[uv]))$")
_EMA = re.compile(r"^(ema|model_ema|ema_model|module_ema|ema_state_dict|teacher|shadow"
                  r"|averaged_model|swa_model|momentum_encoder|target_encoder|n_averaged)([._]|$)"
                  # an EMA word inside the top-level name: generator_ema.*, net_g_ema.*, ema_net.*
                  r"|^[A-Za-z0-9]+(_[A-Za-z0-9]+)*_(ema|teacher|shadow|swa)(_[A-Za-z0-9]+)*\.")
_TIED = re.compile(r"(^|\.)(lm_head|lm_head\.decoder|predictions\.decoder|output_projection"
                   r"|embed_out|generator|output|decoder)\.(weight|bias)$")


def _wrapper_only(keys: tuple[str, ...], anywhere: bool) -> str | None:
    """The wrapper segment every key carries (first segment, or anywhere), if one does."""
    if not keys:
        return None
    firsts = {(next((s for s in _segments(k) if s in WRAPPER_SEGMENTS), None) if anywhere
               else _segments(k)[0]) for k in keys}
    if len(firsts) == 1 and (seg := firsts.pop()) in WRAPPER_SEGMENTS:
        return seg
    return None


CUT_WRAPPER = 0.72  # one side's shown keys all under a wrapper, the other's none, no key pairs: first, below 0.8


def _prefix_rule(ev: Evidence, label: str) -> Finding | None:
    extra, base = (ev.unexpected, ev.missing) if label == "prefix_added" else (ev.missing, ev.unexpected)
    prefix, infix, hits = prefix_matches(extra, base)
    if label == "prefix_missing" and hits and part_of_model(prefix, hits, ev.missing):
        return None  # the checkpoint is one part of the model (a backbone): part_checkpoint speaks
    if hits and len(hits) >= 0.5 * min(len(extra), len(base)):
        conf = min(0.97, 0.6 + 0.37 * len(hits) / len(extra))
        stripped = {k[len(prefix):] if not infix else strip_wrappers(k) for k in hits}
        return Finding(label, conf, frozenset(hits) | stripped,
                       {"prefix": prefix, "infix": infix, "examples": hits[:3], "count": len(hits)})
    if ev.truncated and base and (seg := _wrapper_only(extra, anywhere=False)) and not any(
            s in WRAPPER_SEGMENTS for k in base for s in _segments(k)):
        # A cut list: every key shown on one side under a wrapper's prefix, none on the other. The
        # two sides show other stretches of the model (the end of one list, the start of the
        # other), so no key pairs; the wrapper on one side alone is still the plain reading, and
        # another model wrapped the same way is the other.
        return Finding(label, CUT_WRAPPER, frozenset(extra),
                       {"prefix": seg + ".", "infix": False, "examples": list(extra[:3]),
                        "count": len(extra), "unpaired_cut": True})
    wrapped_model = (ev.class_name or "") in _WRAPPER_CLASSES
    if base or (label == "prefix_added" and wrapped_model):
        return None
    seg = _wrapper_only(extra, anywhere=label == "prefix_missing")
    if seg is None:
        return None
    infix = label == "prefix_missing" and not all(k.startswith(seg + ".") for k in extra)
    conf = 0.82 if len(extra) >= 3 else 0.72
    if label == "prefix_missing" and wrapped_model and not infix:
        # The message names the wrapper, so every model key carries its prefix: the prefix says
        # nothing. Only a missing list spanning several modules reads as the whole model missing.
        tops = {_segments(k)[1] for k in extra if len(_segments(k)) > 2}
        if len(tops) < 2:
            if not ev.truncated:
                return None  # one module's keys, the whole list: that module is new (code changed)
            conf = 0.6  # one module shown of a cut list: the whole model, or a part's file
    # Every shown key carries the wrapper: the other list was cut, the relation is still plain.
    return Finding(label, conf, frozenset(extra),
                   {"prefix": seg + ".", "infix": infix, "examples": list(extra[:3]),
                    "count": len(extra)})


def prefix_added(ev: Evidence) -> Finding | None:
    """Checkpoint keys carry a wrapper prefix the model does not (``module.``, ``_orig_mod.``)."""
    if ev.named_prefix and ev.is_empty:
        # A sentence names the wrapper's prefix and no key: the saved keys carrying it is the
        # usual complaint, but prose does not say which side has it, so it stays a candidate.
        return Finding("prefix_added", 0.7, frozenset(),
                       {"prefix": ev.named_prefix, "infix": False, "examples": [], "count": 0})
    return _prefix_rule(ev, "prefix_added")


def prefix_missing(ev: Evidence) -> Finding | None:
    """The model's keys carry a prefix the checkpoint lacks (model wrapped before loading)."""
    return _prefix_rule(ev, "prefix_missing")


def _heads(keys: Iterable[str]) -> Counter[str]:
    return Counter(_segments(k)[0] for k in keys)


def optimizer_state_passed(ev: Evidence) -> Finding | None:
    """An optimizer's ``state_dict`` (``state``, ``param_groups``) was given to the model."""
    heads = _heads(ev.unexpected)
    if "param_groups" in heads and set(heads) <= {"state", "param_groups"}:
        return Finding("optimizer_state_passed", 0.95, frozenset(ev.unexpected),
                       {"examples": sorted(heads)})
    # Only optimizer entries at the top level (optimG, optimD): a file of optimizers alone.
    if heads and all("." not in k for k in ev.unexpected) and all(
            _OPTIMIZER_NAME.match(h) for h in heads):
        return Finding("optimizer_state_passed", 0.85, frozenset(ev.unexpected),
                       {"examples": sorted(heads)})
    return None


def wrapped_checkpoint(ev: Evidence) -> Finding | None:
    """A whole training checkpoint (``epoch``, ``optimizer``, ``state_dict``) was passed."""
    if ev.source == "files" and ev.used_key and not ev.whole_file:
        # The model's weights were found under a key: passing the whole file fails to load.
        conf = 0.9 if ev.is_empty else 0.5
        return Finding("wrapped_checkpoint", conf, frozenset(),
                       {"container": ev.used_key, "top_keys": [ev.used_key.split(".")[0]]})
    heads = _heads(ev.unexpected)
    if not heads or len(heads) > 16 or set(heads) <= {"state", "param_groups"}:
        return None
    # a top-level entry (no dot) named for optimizer, scheduler, scaler or EMA state anywhere in its
    # name (discr_optim, multiscale_discr_optimizer_0, ema_model) belongs to a training file too
    known = [h for h in heads if h in TRAINING_KEYS or _CONTAINER.match(h)
             or ("." not in h and _TRAINING_NAME.match(h)) or (h in ev.unexpected and _NOT_WEIGHTS.search(h))]
    if not known or sum(heads[h] for h in known) < 0.5 * len(ev.unexpected):
        return _unknown_container(ev, heads)
    # A dotted "module.x" or "model.x" is a prefix, not a wrapper: torch names a whole nested
    # dict by its top-level key, and a training checkpoint also carries plain entries (epoch).
    dotless = [k for k in ev.unexpected if "." not in k and k in known]
    plain = [h for h in known if not _CONTAINER.match(h)]
    # The weights may sit under a name no list knows ("weight", "G"): the one other dotless key.
    others = [h for h in heads if h not in known and heads[h] == 1 and h in ev.unexpected]
    if not dotless and not plain and ev.used_key is None:
        return None
    containers = [h for h in heads if _CONTAINER.match(h) and not _NOT_WEIGHTS.search(h)]
    container = next((c for c in ("state_dict", "model_state_dict", "model", "net", "module")
                      if c in containers), containers[0] if containers else None)
    if container is None and len(others) == 1 and plain:
        container = others[0]
    conf = 0.93 if container else 0.82
    explained = {k for k in ev.unexpected if _segments(k)[0] in known or k == container}
    return Finding("wrapped_checkpoint", conf, frozenset(explained) | frozenset(ev.missing),
                   {"container": container, "top_keys": sorted(heads)})


def _unknown_container(ev: Evidence, heads: Counter[str]) -> Finding | None:
    """A few top-level entries (no dot) unexpected while the model's keys spanning several
    modules are missing: a dict that holds the state_dict under a name no list knows (``_model``).
    torch names a nested dict by its top-level key; a model's own keys have dots."""
    if len(heads) > 8 or any("." in k for k in ev.unexpected) or len(ev.missing) < 4:
        return None
    if len({_segments(k)[0] for k in ev.missing}) < 2:
        return None
    container = next((h for h in sorted(heads) if re.search(r"model|net|state|weights", h, re.I)), None)
    return Finding("wrapped_checkpoint", 0.72, frozenset(ev.unexpected) | frozenset(ev.missing),
                   {"container": container, "top_keys": sorted(heads)})


def version_buffers(ev: Evidence) -> Finding | None:
    """Buffers that came or went across library versions (``num_batches_tracked``, ``position_ids``)."""
    keys = ev.missing + ev.unexpected
    buffers = [k for k in keys if _BUFFER.search(k)
               or (ev.legacy_norm_stats and k.endswith(("running_mean", "running_var")))]
    if spectral := {_SPECTRAL.split(k)[0] for k in keys if _SPECTRAL.search(k)}:
        # spectral_norm saves weight_orig/u/v where the plain layer has weight: the same layer
        # with or without its power-iteration state, not a rename.
        buffers += [k for k in keys if k.rsplit(".", 1)[0] in spectral and k not in buffers]
    side = "unexpected" if not ev.missing else "missing" if not ev.unexpected else "both"
    if buffers:
        share = len(buffers) / len(keys)
        conf = 0.95 if share == 1 and not ev.mismatched else 0.9 * share
        if ev.truncated and all("." not in k for k in keys):
            conf = min(conf, 0.75)  # a buffer named as a word in a sentence: the rest unseen
        return Finding("version_buffers", conf, frozenset(buffers),
                       {"examples": buffers[:3], "count": len(buffers), "side": side,
                        "leaves": sorted({k.rsplit(".", 1)[-1] for k in buffers})})
    one_sided = not (ev.missing and ev.unexpected) and not ev.mismatched
    # Keys with no parameter leaf on one side only are buffers (noises.noise_3, attn.mask).
    if (one_sided and keys and all("." in k for k in keys)
            and not any(_PARAM_LEAF.search(k) for k in keys)):
        return Finding("version_buffers", 0.6 if len(keys) <= 4 else 0.7, frozenset(keys),
                       {"examples": list(keys[:3]), "count": len(keys), "side": side,
                        "leaves": sorted({k.rsplit(".", 1)[-1] for k in keys})})
    return None


def ema_weights(ev: Evidence) -> Finding | None:
    """The checkpoint holds an EMA/teacher copy next to (or instead of) the weights."""
    for side, keys in (("unexpected", ev.unexpected), ("missing", ev.missing)):
        hits = [k for k in keys if _EMA.match(k)]
        if hits and len(hits) >= 0.5 * len(keys):
            prefix = re.match(r"^[A-Za-z_]*?(ema|teacher|shadow|averaged_model|swa_model|encoder)"
                              r"[._]?", hits[0])
            # An EMA prefix that maps onto the other side's keys is more than a prefix.
            other = set(ev.missing if side == "unexpected" else ev.unexpected)
            maps = sum(1 for k in hits if _EMA.sub("", k) in other)
            conf = 0.98 if other and maps >= 0.5 * len(other) else 0.88
            return Finding("ema_weights", conf, frozenset(hits) | other,
                           {"examples": hits[:3], "count": len(hits), "side": side,
                            "prefix": prefix.group(0) if prefix else hits[0].split(".")[0] + "."})
    return None


def tied_weights(ev: Evidence) -> Finding | None:
    """An output head tied to the embedding is missing from (or extra in) the checkpoint."""
    if ev.tied:
        # from files: the model's parameters share one tensor, which the file stores once; the
        # decided cause when nothing else differs (a renamed head also leaves its tie absent)
        return Finding("tied_weights", 0.97 if ev.is_empty else 0.5, frozenset(a for a, _ in ev.tied),
                       {"examples": [a for a, _ in ev.tied], "side": "missing",
                        "through": [b for _, b in ev.tied]})
    for side, keys in (("missing", ev.missing), ("unexpected", ev.unexpected)):
        other = ev.unexpected if side == "missing" else ev.missing
        if other and renamed_keys(replace(ev, missing=keys, unexpected=other, mismatched=())):
            continue  # the head is there under another name
        if keys and len(keys) <= 3 and all(_TIED.search(k) for k in keys):
            # From text alone the same lone output weight may be a renamed or re-parametrised
            # head: below the decision threshold until shapes (files) confirm the tie.
            conf = 0.78 if side == "missing" else 0.7
            shape = ev.model_shapes.get(keys[0]) if side == "missing" else None
            if shape and shape in ev.checkpoint_shapes.values():
                conf = 0.95
            return Finding("tied_weights", conf, frozenset(keys),
                           {"examples": list(keys), "side": side})
    return None


def _mismatch_rule(ev: Evidence, pred: Callable[[ShapeMismatch], bool], share: float) -> list[ShapeMismatch]:
    hits = [m for m in ev.mismatched if pred(m)]
    return hits if ev.mismatched and len(hits) >= share * len(ev.mismatched) else []


def partitioned_checkpoint(ev: Evidence) -> Finding | None:
    """Empty or placeholder tensors saved from ZeRO-3/FSDP-partitioned parameters.

    Not a layer built with a count of zero (``[0, 2048]``): a partitioned parameter is flattened.
    """
    zero = zero_count_keys(ev.mismatched)
    empty = _mismatch_rule(ev, lambda m: 0 in (_numel(m.checkpoint_shape), _numel(m.model_shape))
                           and m.key not in zero, 0.5)
    if empty:
        side = "checkpoint" if _numel(empty[0].checkpoint_shape) == 0 else "model"
        return Finding("partitioned_checkpoint", 0.95, frozenset(m.key for m in empty),
                       {"examples": [m.key for m in empty[:3]], "count": len(empty), "side": side})
    ones = _mismatch_rule(ev, lambda m: m.checkpoint_shape == (1,) and _numel(m.model_shape) > 1, 0.8)
    if len(ones) >= 3:
        return Finding("partitioned_checkpoint", 0.85, frozenset(m.key for m in ones),
                       {"examples": [m.key for m in ones[:3]], "count": len(ones),
                        "side": "checkpoint", "placeholder": True})
    return None


def transposed_weights(ev: Evidence) -> Finding | None:
    """Weights whose axes are swapped (GPT-2 ``Conv1D`` vs ``nn.Linear``) or permuted (kernel layouts)."""
    hits = _mismatch_rule(ev, lambda m: len(m.model_shape) >= 2 and m.model_shape != m.checkpoint_shape
                          and sorted(m.checkpoint_shape) == sorted(m.model_shape), 0.5)
    if not hits:
        return None
    swapped = all(len(m.model_shape) == 2 for m in hits)
    # kernels whose channels alone trade places: another layer (swapped_channels), a permute below it
    confidence = 0.92 if swapped else 0.5 if all(channels_swapped(m) for m in hits) else 0.85
    return Finding("transposed_weights", confidence, frozenset(m.key for m in hits),
                   {"examples": [m.key for m in hits[:3]], "count": len(hits), "swapped": swapped,
                    "permutation": _axis_order(hits[0]), "keys": [m.key for m in hits]})


def _axis_order(m: ShapeMismatch) -> list[int]:
    """Checkpoint axes in the model's order, keeping equal-sized axes in their original order."""
    free = list(range(len(m.checkpoint_shape)))
    order = []
    for size in m.model_shape:
        i = next(i for i in free if m.checkpoint_shape[i] == size)
        free.remove(i)
        order.append(i)
    return order


SPECIFIC_RULES: tuple[Callable[[Evidence], Finding | None], ...] = (
    optimizer_state_passed, wrapped_checkpoint, prefix_added, prefix_missing, version_buffers,
    adapter_or_quantization, ema_weights, tied_weights, fused_projection, partitioned_checkpoint,
    transposed_weights, head_size_mismatch, sharded_tensors, architecture_variant, several_settings,
    norm_kind, lone_norm_code, lone_table_code, renamed_keys, numbered_copies, part_checkpoint,
    anchor_count, input_features, layer_of_another_kind, concatenated_part, swapped_channels,
    recurrent_kind, layers_bias_flag)
FALLBACK_RULES: tuple[Callable[[Evidence], Finding | None], ...] = (
    another_depth, model_code_changed, wrong_model)

LABELS = ("prefix_added", "prefix_missing", "wrapped_checkpoint", "optimizer_state_passed",
          "head_size_mismatch", "architecture_variant", "renamed_keys", "version_buffers",
          "tied_weights", "adapter_or_quantization", "transposed_weights", "fused_projection",
          "partitioned_checkpoint", "ema_weights", "model_code_changed", "wrong_model",
          "new_task_head", "profiler_buffers")


# Rules that read a relation between the two key lists: a cut list shows only part of it.
_RELATIONAL = frozenset({"model_code_changed", "renamed_keys", "wrong_model", "architecture_variant",
                         "fused_projection", "new_task_head"})


def _calibrated(f: Finding, ev: Evidence) -> Finding:
    """Below the decision threshold (0.8) when a cut list hides half of the relation a rule reads."""
    from_shapes = f.facts.get("kind") in ("width", "pos_grid", "in_chans")  # mismatch lines
    if ev.truncated and f.label in _RELATIONAL and not from_shapes and f.confidence >= 0.8:
        return replace(f, confidence=0.75)
    # Moved modules that leave keys unpaired, next to another module's tensor of another size
    # (not one of the moved layers, as an index shift gives): another variant of the network
    # (other layers and sizes) reads the same.
    moved = set(f.facts.get("paired_modules", ()))
    if (f.facts.get("unpaired") and f.confidence >= 0.8
            and any(top_module(m.key) not in moved for m in ev.mismatched)):
        return replace(f, confidence=0.72)
    # Input channels seen in a cut text: the modified network's new modules may be cut away.
    if ev.truncated and f.facts.get("kind") == "in_chans" and f.confidence >= 0.8:
        return replace(f, confidence=0.75)
    # A named prefix (backbone., model.) seen on part of the keys: the whole model's file with a
    # prefix, or one part's file (a backbone) in a bigger model; the hidden keys decide.
    named = [s for s in str(f.facts.get("prefix", "")).split(".") if s and s not in WRAPPER_SEGMENTS]
    if ev.truncated and f.label in ("prefix_added", "prefix_missing") and named and f.confidence >= 0.8:
        # a part's name on the model's side (backbone.): the part's file is the more common
        # reading (part_prefix_cut), and its fix (load into model.backbone) is right for both
        part = f.label == "prefix_missing" and named[0] in PART_NAMES
        return replace(f, confidence=0.55 if part else 0.75)
    return f


def rank_findings(ev: Evidence, min_confidence: float = 0.1) -> list[Finding]:
    """Run every rule on ``ev`` and return the findings, most likely first.

    Args:
        ev: the evidence from an error text or from files.
        min_confidence: findings below this are dropped.

    Returns:
        Findings sorted by confidence (ties keep the rule order), without duplicate labels.
    """
    findings = [f for rule in SPECIFIC_RULES if (f := rule(ev)) is not None]
    findings = possible(revise_vocab(revise(findings, ev), ev) + convention_findings(ev)
                        + vocab_findings(ev) + task_model_file(ev), ev)
    partial = possible(revise(partial_findings(ev), ev), ev)
    rest = residual(ev, findings + [replace(f, confidence=1.0) for f in partial])
    findings += partial
    findings += revise([f for rule in FALLBACK_RULES if (f := rule(rest)) is not None], ev)
    findings += head_left(ev, rest)
    findings = with_new_modules(findings, ev, rest)
    findings = head_beside_new_modules(findings, ev, rest)
    best: dict[str, Finding] = {}
    for f in calibrate([_calibrated(f, ev) for f in findings], ev):
        if f.confidence >= min_confidence and (f.label not in best or
                                               f.confidence > best[f.label].confidence):
            best[f.label] = f
    order = {label: i for i, label in enumerate(f.label for f in findings)}
    return sorted(best.values(), key=lambda f: (-round(f.confidence, 3), order[f.label]))
