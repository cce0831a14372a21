"""A detector's or segmenter's file loaded into the classifier it was built on.

Detection and segmentation models keep their backbone's layers under the backbone's own names
and add modules that no classifier has, by well-known names (torchvision's and mmdetection's
``fpn``/``neck``, ``rpn``, ``roi_heads``, ``bbox_head``; RetinaNet's ``regressionModel`` and
``classificationModel``; mmsegmentation's ``decode_head``). When the model misses nothing but its
classifier and the checkpoint's extra keys sit in such modules, the backbone loaded and the file is
the bigger model's: the wrong file for this model, not changed code.
"""

from __future__ import annotations

import re

from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments

_CLASSIFIER = re.compile(r"^(fc|classifier|head|last_linear|logits)(\.\d+)?\.(weight|bias)$")
_TASK_MODULE = re.compile(r"^(fpn|neck|rpn|roi_heads|bbox_head|mask_head|decode_head|auxiliary_head"
                          r"|regression\w*|classification\w*|seg_head|det_head|anchor\w*)$", re.I)


def task_model_file(ev: Evidence) -> list[Finding]:
    """wrong_model when the model misses only its classifier and the checkpoint's extra keys
    are a detector's or segmenter's modules (a candidate when a list is cut)."""
    if ev.mismatched or ev.lookups or ev.report or not (ev.missing and ev.unexpected):
        return []
    if len(ev.missing) > 4 or not all(_CLASSIFIER.match(k) for k in ev.missing):
        return []
    tops = sorted({segments(k)[0] for k in ev.unexpected})
    if not all(_TASK_MODULE.match(t) for t in tops):
        return []
    facts = {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
             "examples_missing": list(ev.missing[:3]), "examples_unexpected": list(ev.unexpected[:3]),
             "task_modules": tops}
    return [Finding("wrong_model", 0.75 if ev.truncated else 0.85,
                    frozenset(ev.missing + ev.unexpected), facts)]
