"""Readings of what the specific findings leave unexplained (the residue ``structure.residual``
computes): a task head that is all a fix leaves missing, and modules on one side only beside a
changed layer shape."""

from __future__ import annotations

from dataclasses import replace

from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments
from ckpttools.ops.diagnose.partial import new_task_head

__all__ = ["head_beside_new_modules", "head_left", "with_new_modules"]

DECIDED = 0.8


def with_new_modules(findings: list[Finding], ev: Evidence, rest: Evidence) -> list[Finding]:
    """Whole modules on one side nobody explains, next to a changed layer shape: the network was
    modified (new modules and another input or width), not another variant of the same code.

    A variant changes the shapes of the modules both sides have; modules that exist on one side
    only (``attention.*``, ``conv_reduce.*``) besides a changed shape elsewhere mean other code.
    """
    changed = {segments(m.key)[0] for m in ev.mismatched}
    new = {segments(k)[0] for k in rest.missing + rest.unexpected if "." in k} - changed
    shape = [f for f in findings if f.label == "architecture_variant" and f.confidence >= 0.8
             and f.facts.get("kind") in ("in_chans", "width")]
    code = next((f for f in findings if f.label == "model_code_changed"), None)
    if not new or not shape or code is None:
        return findings
    # One new module in a whole text counts when it is no stack's layer (``blocks.3.*``: another
    # depth of a variant adds those): a one-off module (``criterion_bonds``) is other code.
    stacked = any(p.isdigit() for k in rest.missing + rest.unexpected if segments(k)[0] in new
                  for p in segments(k))
    if len(new) < 2 and not ev.truncated and stacked:
        return findings
    # One new module (or one shown in a cut text, where more may hide): neither reading decides
    # (changed code first: a module the other side lacks is more than a variant's shape).
    conf = 0.72 if len(new) < 2 else 0.75 if ev.truncated else 0.82
    both = replace(code, confidence=conf, explains=code.explains | shape[0].explains)
    return [both if f is code else replace(f, confidence=0.7) if f in shape else f for f in findings]


def head_beside_new_modules(findings: list[Finding], ev: Evidence, rest: Evidence) -> list[Finding]:
    """A head of another size beside more keys on one side only than it explains, in modules no
    size mismatch touches: the code differs beyond a head's size, so the head cannot decide.

    A model built for another class count changes its head's shapes and nothing else; whole
    modules present on one side only (a detector's ``bbox_head.*`` where the other library
    version has ``roi_head.bbox_head.*``) are other code, and the head's sizes may follow from
    that code (another anchor layout) rather than from a class count. Both stay candidates,
    changed code first: it explains every key shown.
    """
    head = next((f for f in findings if f.label == "head_size_mismatch" and f.confidence >= DECIDED),
                None)
    code = next((f for f in findings if f.label == "model_code_changed"), None)
    if head is None or code is None:
        return findings
    changed = {segments(m.key)[0] for m in ev.mismatched}
    alone = [k for k in rest.missing + rest.unexpected if "." in k and segments(k)[0] not in changed]
    if len(alone) <= len(head.explains):
        return findings
    both = replace(code, confidence=0.72, explains=code.explains | head.explains)
    return [both if f is code else replace(f, confidence=0.7) if f is head else f for f in findings]


def head_left(ev: Evidence, rest: Evidence) -> list[Finding]:
    """From files: a task head is all that another finding's fix leaves missing (a backbone
    saved through DataParallel, loaded into a task model)."""
    if ev.matched is None or rest.unexpected or rest.mismatched or len(rest.missing) == len(ev.missing):
        return []
    head = new_task_head(rest)
    return [head] if head is not None else []
