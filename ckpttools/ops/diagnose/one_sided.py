"""Cause rules for a single key list whose other half is not in the text.

The relation that decides (a prefix, a rename) needs both lists; with one, what is left is the
shape of the list itself: a part of a composite model named by convention (``backbone.``) that
every shown key sits under, or the one key PyTorch <= 0.3 stopped at. Each rule returns its
candidates with confidences below the decision threshold, since the hidden list could still
overturn them, and the keys they cover, so the catch-all rules do not speak over them.
"""

from __future__ import annotations

import re

from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments
from ckpttools.ops.diagnose.shapes import inserted_layer_group
from ckpttools.ops.diagnose.structure import prefix_matches

# The part of a composite model that is loaded from another model's file by convention: a
# detector's or segmenter's backbone, a CLIP-style model's image tower.
PART_NAMES = frozenset({"backbone", "body", "trunk", "visual", "vision_model", "vision_tower",
                        "image_encoder", "feature_extractor", "pretrained", "base_net"})
# What task modules call the network they hold (Lightning's self.model, self.net).
HOLDER_NAMES = frozenset({"model", "net", "network", "backbone_model", "base_model", "student"})
# transformers' base_model_prefix: a task class (BertForPreTraining, GPT2LMHeadModel) keeps its
# base model under this name, so its state_dict's keys carry it and the base class's do not.
BASE_MODEL_PREFIXES = frozenset({"bert", "roberta", "albert", "electra", "deberta", "distilbert",
                                 "xlnet", "longformer", "mpnet", "ernie", "nezha", "roformer",
                                 "mobilebert", "layoutlm", "funnel", "vit", "deit", "beit", "swin",
                                 "convnext", "wav2vec2", "hubert", "wavlm", "transformer"})
_WRAPPER_CLASSES = frozenset({"DataParallel", "DistributedDataParallel", "OptimizedModule",
                              "FullyShardedDataParallel"})


def _bare(ev: Evidence) -> bool:
    """Keys on one side only: no shapes, no loader lookups, no load report."""
    return not (ev.mismatched or ev.lookups or ev.report)


def part_missing(ev: Evidence) -> list[Finding]:
    """Only missing keys, led by a model part's name (``backbone.``): that part's file was loaded.

    A backbone's checkpoint given to the whole detector misses every model key, the backbone's
    under ``backbone.`` and the neck's and heads' too; a checkpoint without the prefix, or with
    a wrapper's, or a training dict, would read the same on the keys shown.
    """
    if ev.unexpected or not ev.missing or not _bare(ev) or (ev.class_name or "") in _WRAPPER_CLASSES:
        return []
    first = segments(ev.missing[0])[0]
    if first not in PART_NAMES or len(segments(ev.missing[0])) < 3:
        return []
    if any(s.isdigit() and s != "0" for s in segments(ev.missing[0])):
        # torch lists missing keys in the model's order: a list led by layer 12 of a stack means
        # layers 0-11 loaded under the part's name, so the file is no part's: another depth
        return []
    under = [k for k in ev.missing if k.startswith(first + ".")]
    others = sorted({segments(k)[0] for k in ev.missing} - {first})
    if len(under) < max(2, 0.5 * len(ev.missing)):
        return []
    keys = frozenset(ev.missing)
    facts = {"missing": len(ev.missing), "unexpected": 0, "examples_missing": list(ev.missing[:3]),
             "examples_unexpected": [], "part": first + ".",
             "not_in_file": others[:4] or ["the rest of the model (not shown)"]}
    # A wrapper prefix or a training dict on the checkpoint read the same, and are as common in
    # real threads (whole_model_missing ranks them): a candidate, not the first answer.
    return [Finding("wrong_model", 0.45, keys, facts),
            Finding("prefix_missing", 0.3, keys, {"prefix": first + ".", "infix": False,
                                                   "examples": under[:3], "count": len(under)})]


def first_key_unexpected(ev: Evidence, starts_model: bool) -> list[Finding]:
    """One unexpected key and nothing else (PyTorch <= 0.3 stops at the first one it meets).

    When that key is where a model's keys start (``conv1.weight``, ``embed.weight``), the model
    has none of the checkpoint's names: the model code changed, the model is wrapped (``module.``)
    and the file is not, or it is another model; the first key cannot tell which.
    """
    if ev.missing or len(ev.unexpected) != 1 or not _bare(ev) or not starts_model:
        return []
    keys = frozenset(ev.unexpected)
    facts = {"missing": 0, "unexpected": 1, "examples_missing": [],
             "examples_unexpected": list(ev.unexpected)}
    holder = segments(ev.unexpected[0])[0]
    if holder in HOLDER_NAMES | PART_NAMES and len(segments(ev.unexpected[0])) >= 2:
        # a task module's name in front of the model's first key (model.conv1.weight), or a part's
        # (backbone.conv1.weight): the file is the bigger model's, the model that part
        return [Finding("prefix_added", 0.5, keys, {"prefix": holder + ".", "infix": False,
                                                     "examples": list(ev.unexpected), "count": 1}),
                Finding("model_code_changed", 0.3, keys, facts)]
    return [Finding("model_code_changed", 0.45, keys, facts),
            Finding("prefix_missing", 0.4, keys, {"prefix": "module.", "infix": False,
                                                   "examples": list(ev.unexpected), "count": 1,
                                                   "guessed": True}),
            Finding("wrong_model", 0.3, keys, facts)]


def inserted_layer(ev: Evidence) -> list[Finding]:
    """Layers 1 and up of a flat Sequential missing, layer 0 not: a layer was inserted after it.

    The checkpoint's keys (not shown) sit at the old indices; a careful reader sees the model
    code changed (a norm or dropout added) rather than a deeper model, which adds at the end.
    """
    if ev.unexpected or not _bare(ev) or (group := inserted_layer_group(ev.missing)) is None:
        return []
    keys = frozenset(ev.missing)
    return [Finding("model_code_changed", 0.65, keys,
                    {"missing": len(ev.missing), "unexpected": 0, "inserted": group,
                     "examples_missing": list(ev.missing[:3]), "examples_unexpected": []}),
            Finding("architecture_variant", 0.3, keys,
                    {"kind": "depth", "side": "missing", "group": group, "first": 1,
                     "last": max(int(segments(k)[-2]) for k in ev.missing), "count": len(keys),
                     "examples": list(ev.missing[:3])})]


def part_prefix_cut(ev: Evidence) -> list[Finding]:
    """Cut lists where the model's keys are the checkpoint's under a part's name (``backbone.``).

    With the lists whole, the other top-level modules (neck, heads) left missing decide between
    the part's file and a prefix; cut, the part's file is the more common and its fix (load into
    ``model.backbone``) is right for both.
    """
    if not (ev.truncated and ev.missing and ev.unexpected):
        return []
    prefix, infix, hits = prefix_matches(ev.missing, ev.unexpected)
    if infix or not hits or prefix.split(".")[0] not in PART_NAMES:
        return []
    return [Finding("wrong_model", 0.6, frozenset(ev.missing + ev.unexpected),
                    {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
                     "examples_missing": list(ev.missing[:3]),
                     "examples_unexpected": list(ev.unexpected[:3]), "part": prefix,
                     "not_in_file": ["the rest of the model (not shown)"]})]


_TIED_NAMES = frozenset({"lm_head", "output", "output_projection", "embed_out", "generator",
                         "decoder"})


def reparametrized_weight(ev: Evidence) -> list[Finding]:
    """A layer's ``weight`` missing alone, its ``bias`` not: the file stores that weight otherwise.

    ``spectral_norm``/``weight_norm`` save ``weight_orig``/``weight_u``/``weight_v`` (or
    ``weight_g``/``weight_v``) where the plain layer has ``weight``, and the bias is unchanged;
    a renamed layer would miss its bias too. An output layer's lone weight is more often tied
    (tied_weights speaks for it).
    """
    if ev.unexpected or not ev.missing or len(ev.missing) > 3 or not _bare(ev):
        return []
    if not all(segments(k)[-1] == "weight" and len(segments(k)) >= 2 for k in ev.missing):
        return []
    if any(segments(k)[-2] in _TIED_NAMES for k in ev.missing) or ev.truncated:
        return []
    if len(ev.missing) > 1 and all(any(p.isdigit() for p in segments(k)) for k in ev.missing):
        return []  # bias-free layers N and up: another depth reads it (another_depth)
    keys = frozenset(ev.missing)
    return [Finding("version_buffers", 0.55, keys,
                    {"examples": list(ev.missing), "count": len(keys), "side": "missing",
                     "leaves": ["weight_orig", "weight_u", "weight_v"], "reparametrized": True}),
            Finding("model_code_changed", 0.35, keys,
                    {"missing": len(keys), "unexpected": 0, "examples_missing": list(ev.missing),
                     "examples_unexpected": []})]


_WRAPPER_PREFIX = {"DataParallel": "module.", "DistributedDataParallel": "module.",
                   "OptimizedModule": "_orig_mod."}


def wrapped_model_unexpected(ev: Evidence) -> list[Finding]:
    """The message names a wrapper class (``DataParallel``) and the checkpoint's keys lack its prefix.

    Every key of a DataParallel/DDP model starts with ``module.`` (``_orig_mod.`` for a compiled
    one): checkpoint keys without it cannot load, whatever the cut missing list said.
    """
    prefix = _WRAPPER_PREFIX.get(ev.class_name or "")
    if prefix is None or ev.missing or not ev.unexpected or not _bare(ev):
        return []
    if any(k.startswith(prefix) for k in ev.unexpected):
        return []
    return [Finding("prefix_missing", 0.85, frozenset(ev.unexpected),
                    {"prefix": prefix, "infix": False, "examples": list(ev.unexpected[:3]),
                     "count": len(ev.unexpected), "class_name": ev.class_name})]


def whole_model_unexpected(ev: Evidence, starts_model: bool) -> list[Finding]:
    """Only unexpected keys, and they span a whole model from its first layer: another model's file.

    The model (not a wrapper, else :func:`wrapped_model_unexpected`) has none of these names;
    its own keys, all missing, were cut from the text. A named prefix on the model's keys (a
    backbone inside a bigger model) reads the same, so it stays a candidate.
    """
    if ev.missing or len(ev.unexpected) < 4 or not _bare(ev) or not starts_model:
        return []
    if (ev.class_name or "") in _WRAPPER_CLASSES or len({segments(k)[0] for k in ev.unexpected}) < 2:
        return []
    keys = frozenset(ev.unexpected)
    facts = {"missing": 0, "unexpected": len(ev.unexpected), "examples_missing": [],
             "examples_unexpected": list(ev.unexpected[:3])}
    return [Finding("wrong_model", 0.55, keys, facts),
            Finding("prefix_missing", 0.3, keys, {"prefix": "module.", "infix": False,
                                                   "examples": list(ev.unexpected[:3]),
                                                   "count": len(keys), "guessed": True})]


_NORM_MODULE = re.compile(r"(^|[._])(norm\w*|\w*_norm|bn\d*|ln\w*|gn|layernorm|LayerNorm|batchnorm)$", re.I)


def legacy_norm_missing(ev: Evidence) -> list[Finding]:
    """Only the ``weight``/``bias`` of norm layers missing: the file names them ``gamma``/``beta``.

    TF ports and code before PyTorch 1.0 saved LayerNorm/BatchNorm parameters as gamma/beta; the
    running statistics (when any) keep their names and load, so only weight and bias are missing.
    """
    if ev.unexpected or not ev.missing or not _bare(ev) or ev.truncated:
        return []  # cut: examples of a norm's weight/bias are in any missing block (another depth)
    mods = {k.rpartition(".")[0] for k in ev.missing}
    if not all(k.rpartition(".")[2] in ("weight", "bias") for k in ev.missing):
        return []
    named = [m for m in mods if _NORM_MODULE.search(m)]
    # every layer a norm by its name, or an unnamed Sequential layer; most of them named norms
    if any(not _NORM_MODULE.search(m) and not m.rpartition(".")[2].isdigit() for m in mods):
        return []
    if 2 * len(named) < len(mods):
        return []
    keys = frozenset(ev.missing)
    return [Finding("renamed_keys", 0.6, keys,
                    {"renames": [["gamma", "weight"], ["beta", "bias"]], "count": len(keys),
                     "legacy": True, "examples": list(ev.missing[:3])})]


def holder_prefix(ev: Evidence) -> list[Finding]:
    """One key list only, every key under one name that holds a whole network (``model.conv1``,
    ``model.fc``): a task module (Lightning's ``self.model``, ``self.net``) saved or loaded.

    Unexpected: the checkpoint was saved from the holder (prefix_added); missing: the model is the
    holder and the file is the bare network's (prefix_missing). Wrapper segments and a part's name
    have their own rules; another model under that name stays a candidate.
    """
    if ev.missing and ev.unexpected or not _bare(ev):
        return []
    keys = ev.missing or ev.unexpected
    firsts = {segments(k)[0] for k in keys}
    if len(keys) < 3 or len(firsts) != 1 or not all(len(segments(k)) >= 2 for k in keys):
        return []
    name, seconds = firsts.pop(), {segments(k)[1] for k in keys}
    # named submodules under a holder's name, not layers N and up of one stack (another depth);
    # a part's name (backbone.) on the checkpoint's keys alone: saved from the bigger model
    # (or a transformers task class's base-model name: saved from BertForPreTraining, loaded
    # into BertModel)
    holders = HOLDER_NAMES | (PART_NAMES | BASE_MODEL_PREFIXES if ev.unexpected else frozenset())
    if name not in holders or len(seconds) < 2 or any(p.isdigit() for p in seconds):
        return []
    label = "prefix_missing" if ev.missing else "prefix_added"
    facts = {"prefix": name + ".", "infix": False, "examples": list(keys[:3]), "count": len(keys)}
    other = {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
             "examples_missing": list(ev.missing[:3]), "examples_unexpected": list(ev.unexpected[:3])}
    return [Finding(label, 0.6, frozenset(keys), facts),
            Finding("wrong_model", 0.25, frozenset(keys), other)]


# Attention projections by the names libraries gave them over versions: LDM/old diffusers (q, k, v,
# proj_out), diffusers 0.x (query, key, value, proj_attn), diffusers now (to_q, to_k, to_v, to_out),
# transformers (q_proj ... out_proj).
ATTENTION_PROJECTIONS = frozenset({"q", "k", "v", "proj_out", "query", "key", "value", "proj_attn",
                                   "to_q", "to_k", "to_v", "to_out", "q_proj", "k_proj", "v_proj",
                                   "out_proj", "o_proj"})


def attention_names(ev: Evidence) -> list[Finding]:
    """One key list holding only attention projections (``attn_1.q.weight``, ``proj_out``) while
    the rest of the model loads: the file names them as another library version does (diffusers
    renamed its VAE's attention twice), or fuses them; the other list decides.
    """
    keys = ev.missing if not ev.unexpected else ev.unexpected if not ev.missing else ()
    if len(keys) < 3 or not _bare(ev):
        return []
    mods = [segments(k)[-3 if segments(k)[-2].isdigit() else -2] for k in keys if len(segments(k)) >= 3]
    if len(mods) < len(keys) or not set(mods) <= ATTENTION_PROJECTIONS or len(set(mods)) < 3:
        return []
    if not all(re.search(r"attn|attention", k, re.I) for k in keys):
        return []
    side = "missing" if ev.missing else "unexpected"
    return [Finding("renamed_keys", 0.6, frozenset(keys),
                    {"renames": [], "attention": sorted(set(mods)), "side": side,
                     "count": len(keys), "examples": list(keys[:3])}),
            Finding("fused_projection", 0.3, frozenset(keys),
                    {"fused": [], "split": sorted(set(mods)), "fused_side": "checkpoint"})]
