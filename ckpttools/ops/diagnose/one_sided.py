"""Cause rules for a single key list whose other half is not in the text.

The relation that decides (a prefix, a rename) needs both lists; with one, what is left is the
shape of the list itself: a part of a composite model named by convention (``backbone.``) that
every shown key sits under, or the one key PyTorch <= 0.3 stopped at. Each rule returns its
candidates with confidences below the decision threshold, since the hidden list could still
overturn them, and the keys they cover, so the catch-all rules do not speak over them.
"""

from __future__ import annotations

from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments
from ckpttools.ops.diagnose.shapes import inserted_layer_group
from ckpttools.ops.diagnose.structure import prefix_matches

# The part of a composite model that is loaded from another model's file by convention: a
# detector's or segmenter's backbone, a CLIP-style model's image tower.
PART_NAMES = frozenset({"backbone", "body", "trunk", "visual", "vision_model", "vision_tower",
                        "image_encoder", "feature_extractor", "pretrained", "base_net"})
_WRAPPER_CLASSES = frozenset({"DataParallel", "DistributedDataParallel", "OptimizedModule",
                              "FullyShardedDataParallel"})


def _bare(ev: Evidence) -> bool:
    """Keys on one side only: no shapes, no loader lookups, no load report."""
    return not (ev.mismatched or ev.lookups or ev.report)


def part_missing(ev: Evidence) -> list[Finding]:
    """Only missing keys, led by a model part's name (``backbone.``): that part's file was loaded.

    A backbone's checkpoint given to the whole detector misses every model key, the backbone's
    under ``backbone.`` and the neck's and heads' too; a checkpoint merely without the prefix
    would differ the same way on the keys shown. The part's file is the more common, and its fix
    (``model.backbone.load_state_dict``) also covers the other.
    """
    if ev.unexpected or not ev.missing or not _bare(ev) or (ev.class_name or "") in _WRAPPER_CLASSES:
        return []
    first = segments(ev.missing[0])[0]
    if first not in PART_NAMES or len(segments(ev.missing[0])) < 3:
        return []
    under = [k for k in ev.missing if k.startswith(first + ".")]
    others = sorted({segments(k)[0] for k in ev.missing} - {first})
    if len(under) < max(2, 0.5 * len(ev.missing)):
        return []
    keys = frozenset(ev.missing)
    facts = {"missing": len(ev.missing), "unexpected": 0, "examples_missing": list(ev.missing[:3]),
             "examples_unexpected": [], "part": first + ".",
             "not_in_file": others[:4] or ["the rest of the model (not shown)"]}
    return [Finding("wrong_model", 0.55, keys, facts),
            Finding("prefix_missing", 0.3, keys, {"prefix": first + ".", "infix": False,
                                                   "examples": under[:3], "count": len(under)})]


def first_key_unexpected(ev: Evidence, starts_model: bool) -> list[Finding]:
    """One unexpected key and nothing else (PyTorch <= 0.3 stops at the first one it meets).

    When that key is where a model's keys start (``conv1.weight``, ``embed.weight``), the model
    has none of the checkpoint's names: most often the model is wrapped (``module.``) and the file
    is not, else it is another model; the first key cannot tell which.
    """
    if ev.missing or len(ev.unexpected) != 1 or not _bare(ev) or not starts_model:
        return []
    keys = frozenset(ev.unexpected)
    facts = {"missing": 0, "unexpected": 1, "examples_missing": [],
             "examples_unexpected": list(ev.unexpected)}
    return [Finding("prefix_missing", 0.45, keys, {"prefix": "module.", "infix": False,
                                                    "examples": list(ev.unexpected), "count": 1,
                                                    "guessed": True}),
            Finding("wrong_model", 0.3, keys, facts),
            Finding("model_code_changed", 0.2, keys, facts)]


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
                         "decoder", "classifier", "head"})


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
