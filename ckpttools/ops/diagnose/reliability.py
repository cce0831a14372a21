"""Confidence from text, bounded by what each kind of reading achieved on texts nobody had read.

Every frozen held-out set of ``tests/data/diagnose`` was scored once with the rules as they stood
before anyone read it. ``scripts/calibrate_diagnose.py`` replays those commits and writes one row per
case (``tests/data/diagnose/calibration/outcomes.jsonl``): the first cause, its confidence, whether
it was right, and the evidence it was read from. Each answer is classed by its *basis* (the kind of
reading: a head's rows, a width read off one layer, a buffer added by a newer version, ...). A
decided answer (>= 0.8) stays decided only when the Wilson lower bound, one standard error, of its
basis's precision on those rows is 0.8 or more; otherwise it is lowered to that bound, a candidate
with the deciding command. A basis with fewer than five decided outcomes uses its confidence band's.

This runs once, after the causes are ranked; it lowers confidences and never reorders causes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ckpttools.ops.diagnose.evidence import Evidence, Finding

DECIDED = 0.8
_Z = 1.0  # one standard error: on the sets left out in turn, this kept 94% of decided answers right
_MIN_OUTCOMES = 5  # fewer decided outcomes than this: the confidence band's outcomes decide
_HIGH_BAND = 0.9

# (right, decided) per basis among the first answers at >= 0.8 on frozen..frozen14 (688 texts),
# each scored by the commit named in its README before any rule change made for it. Rebuilt from
# the committed outcomes by ``python scripts/calibrate_diagnose.py --table``; a test holds the two
# equal. Bases with fewer than five outcomes are left out: their band (below) bounds them.
OUTCOMES: dict[str, tuple[int, int]] = {
    "adapter_or_quantization": (9, 13),
    "head_rows": (122, 132),
    "head_rows_hidden_widths": (3, 9),
    "model_code_changed": (4, 9),
    "new_task_head": (8, 8),
    "partitioned_checkpoint": (12, 13),
    "prefix_added": (7, 7),
    "prefix_missing_model_keys_only": (2, 5),
    "profiler_buffers": (8, 8),
    "variant_in_chans": (12, 14),
    "variant_pos_grid": (9, 9),
    "version_buffers": (42, 43),
    "width_layers": (34, 48),
    "width_list_cut": (19, 19),
    "width_one_layer": (20, 26),
    "wrapped_checkpoint": (11, 11),
}
# (right, decided) of every first answer in each confidence band, for bases with few outcomes.
BANDS: dict[str, tuple[int, int]] = {"0.80-0.90": (239, 288), "0.90-1.00": (94, 100)}

_HEAD_SIZE, _VARIANT = "head_size_mismatch", "architecture_variant"
_LAYER = re.compile(r"\.[^.]+$")
_SHOWN = 12  # the outcome rows keep the first 12 size mismatches; live readings look at as many


def reading_of(f: Finding, ev: Evidence) -> dict[str, Any]:
    """A finding and its evidence in the shape of an outcome row (what :func:`basis_of` reads)."""
    return {"got": f.label, "confidence": f.confidence, "truncated": ev.truncated,
            "counts": {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
                       "mismatched": len(ev.mismatched)},
            "mismatched": [[m.key, list(m.checkpoint_shape), list(m.model_shape)]
                           for m in ev.mismatched[:_SHOWN]],
            "cause": {"facts": dict(f.facts)}}


def basis_of_result(result: Any) -> str | None:
    """The basis of a ``DiagnoseResult``'s first cause (``None`` without one), as the outcome
    rows are classed: from the result's JSON form."""
    d = result.to_dict()
    if not d["causes"]:
        return None
    first = d["causes"][0]
    return basis_of({"got": first["label"], "truncated": d["truncated"], "counts": d["counts"],
                     "cause": first["evidence"],
                     "mismatched": [[m["key"], m["checkpoint_shape"], m["model_shape"]]
                                    for m in d["mismatched"][:_SHOWN]]})


def basis_of(reading: Mapping[str, Any]) -> str:
    """The kind of reading behind an answer: its label, split where the outcomes differ.

    Args:
        reading: an outcome row, or :func:`reading_of` of a live finding.

    Returns:
        A stable identifier such as ``head_rows`` or ``width_one_layer``.
    """
    label, counts = reading["got"], reading["counts"]
    kind = ((reading.get("cause") or {}).get("facts") or {}).get("kind", "")
    mm = reading["mismatched"]
    if label == _HEAD_SIZE:
        if counts["missing"] or counts["unexpected"]:
            return "head_rows_beside_other_keys"  # the size is not the only thing that differs
        sizes = _first_sizes(mm)
        if sizes and all(s and s % 64 == 0 for s in sizes):
            return "head_rows_hidden_widths"  # two multiples of 64 read as class counts
        return "head_rows"
    if label == _VARIANT and kind == "width":
        if reading["truncated"] and counts["mismatched"] >= 5:
            return "width_list_cut"  # more tensors differ than the text shows
        return "width_one_layer" if len({_LAYER.sub("", m[0]) for m in mm}) == 1 else "width_layers"
    if label == _VARIANT:
        return f"variant_{kind}"
    if label == "prefix_missing" and not (counts["unexpected"] or counts["mismatched"]):
        return "prefix_missing_model_keys_only"  # the checkpoint's own keys are not shown
    return str(label)


def _first_sizes(mm: Iterable[list[Any]]) -> tuple[int, int] | None:
    """The two sizes of the first mismatch that differs on one axis of equal rank."""
    for _, c, s in mm:
        axes = [i for i in range(len(c)) if len(c) == len(s) and c[i] != s[i]]
        if axes:
            return c[axes[0]], s[axes[0]]
    return None


def wilson_lower(right: int, n: int, z: float = _Z) -> float:
    """The Wilson score interval's lower end for ``right`` of ``n``."""
    if n == 0:
        return 0.0
    p, zz = right / n, z * z
    centre = p + zz / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    return (centre - spread) / (1 + zz / n)


def band_of(confidence: float) -> str:
    """The confidence band of a decided answer."""
    return "0.90-1.00" if confidence >= _HIGH_BAND else "0.80-0.90"


def build_table(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """(right, decided) per basis and per band (``band:0.80-0.90``) from outcome rows."""
    table: dict[str, list[int]] = {}
    for r in rows:
        if r["confidence"] < DECIDED:
            continue
        for key in (basis_of(r), "band:" + band_of(r["confidence"])):
            tally = table.setdefault(key, [0, 0])
            tally[0] += bool(r["right"])
            tally[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(table.items())}


def code_table() -> dict[str, tuple[int, int]]:
    """:data:`OUTCOMES` and :data:`BANDS` in the shape :func:`build_table` returns (bases with
    fewer than five outcomes dropped from both)."""
    return {**OUTCOMES, **{"band:" + k: v for k, v in BANDS.items()}}


def bound(confidence: float, basis: str,
          table: Mapping[str, tuple[int, int]] | None = None) -> tuple[float, tuple[int, int]]:
    """The bound on a decided answer's confidence and the (right, decided) it rests on.

    Args:
        confidence: the rules' confidence (>= 0.8).
        basis: :func:`basis_of` of the answer.
        table: (right, decided) per basis and band; :func:`code_table` when omitted.

    Returns:
        (Wilson lower bound, (right, decided)); the band's counts when the basis has few.
    """
    table = code_table() if table is None else table
    right, n = table.get(basis, (0, 0))
    if n < _MIN_OUTCOMES:
        right, n = table.get("band:" + band_of(confidence), (0, 0))
    return wilson_lower(right, n), (right, n)


def calibrated_confidence(confidence: float, basis: str,
                          table: Mapping[str, tuple[int, int]] | None = None
                          ) -> tuple[float, tuple[int, int] | None]:
    """A decided confidence whose basis's bound is below 0.8, lowered to that bound.

    A basis whose bound is 0.8 or more keeps the rules' confidence: a few dozen outcomes tell
    whether a kind of reading may decide, not whether it is right 0.90 or 0.97 of the time.

    Returns:
        (confidence, the (right, decided) it was judged on, or ``None`` when not decided).
    """
    if confidence < DECIDED:
        return confidence, None
    limit, counts = bound(confidence, basis, table)
    return (confidence if limit >= DECIDED else min(confidence, limit)), counts


def bound_by_outcomes(findings: list[Finding], ev: Evidence) -> list[Finding]:
    """Ranked findings from text, each decided one judged by its basis's held-out outcomes.

    The order is kept: a finding is never above the one ranked before it. One lowered below
    0.8 carries ``facts["calibrated"]`` (the report's reason) and ``facts["basis"]``.

    Args:
        findings: ``rank_findings``' result, best first.
        ev: the evidence they were read from.

    Returns:
        The findings in the same order; those whose basis may not decide, lowered.
    """
    out: list[Finding] = []
    ceiling = 1.0
    for f in findings:
        basis = basis_of(reading_of(f, ev))
        conf, counts = calibrated_confidence(f.confidence, basis)
        if counts is not None and conf < DECIDED:
            why = (f"confidence lowered: this kind of reading ({basis}) was right {counts[0]} of "
                   f"{counts[1]} times on texts it had not seen")
            f = replace(f, facts={**f.facts, "basis": basis, "calibrated": why})
        conf = min(conf, ceiling)  # never above the finding ranked before it
        if conf != f.confidence:
            f = replace(f, confidence=conf)
        ceiling = conf
        out.append(f)
    return out
