"""Readings of what the specific findings leave unexplained (the residue ``structure.residual``
computes): a task head that is all a fix leaves missing, and modules on one side only beside a
changed layer shape."""

from __future__ import annotations

from dataclasses import replace

from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments
from ckpttools.ops.diagnose.partial import new_task_head

__all__ = ["head_left", "with_new_modules"]


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


def head_left(ev: Evidence, rest: Evidence) -> list[Finding]:
    """From files: a task head is all that another finding's fix leaves missing (a backbone
    saved through DataParallel, loaded into a task model)."""
    if ev.matched is None or rest.unexpected or rest.mismatched or len(rest.missing) == len(ev.missing):
        return []
    head = new_task_head(rest)
    return [head] if head is not None else []
