"""Confidence from the breadth of the evidence: a decision needs more than a key or two.

The rules in ``causes`` score a relation by how well it fits the keys shown. On held-out texts
scored before any tuning (frozen2..frozen4 of ``tests/data/diagnose``) most confident wrong
answers came from relations read off too little: the catch-all "model code changed" from one or
two key pairs (a library's rename and a wrapped module read the same), and "the checkpoint lacks
the wrapper's prefix" from a list of missing keys alone (the checkpoint's own keys, which decide
between a missing prefix, another model and changed code, were not shown). These caps run after
every rule, so a new rule cannot decide from such evidence either.
"""

from __future__ import annotations

from dataclasses import replace

from ckpttools.ops.diagnose.evidence import Evidence, Finding
from ckpttools.ops.diagnose.thin_shapes import thin_size_reading

DECIDED = 0.8
# Below DECIDED: the answer lists its candidates and the command that decides. Where these caps
# apply, the first answer was right 2 times in 11 on the held-out sets as scored before tuning, and
# 5 of 5 real texts (development, frozen3, frozen4) and 26 of 26 generated ones with today's rules:
# "about half" on real texts, which 0.6 says (the generated cut texts at 0.50-0.65 are 52% right).
CANDIDATE = 0.6
# Catch-all rules: they explain what no specific relation explains, so they decide only when
# the keys are many enough to rule the specific relations out (two or three pairs of keys read
# as a library's rename, a wrapped module or another variant as well).
_CATCH_ALL = frozenset({"model_code_changed", "wrong_model"})
_FEW_KEYS = 6


def thin_evidence(f: Finding, ev: Evidence) -> str | None:
    """Why the evidence behind a confident finding is too thin to decide, or ``None``.

    Args:
        f: a finding of the cause rules.
        ev: the evidence it was read from.

    Returns:
        A short reason (used in tests and the JSON ``facts``), or ``None`` when it may decide.
    """
    if ev.source != "text" or f.confidence < DECIDED:
        return None
    if f.label in _CATCH_ALL and len(ev.missing) + len(ev.unexpected) < _FEW_KEYS:
        return "few keys"
    if f.label == "prefix_missing" and ev.missing and not (ev.unexpected or ev.mismatched):
        return "only the model's keys shown"
    if f.label in _SIZE_READINGS and not ev.parallel and _pieces(ev):
        return "every checkpoint tensor is 1/k of the model's on one axis"
    return thin_size_reading(f, ev)


# Readings of a smaller checkpoint tensor that a tensor-parallel rank's piece gives as well.
_SIZE_READINGS = frozenset({"head_size_mismatch", "architecture_variant"})
_PIECE_ROWS = 64  # a class count this small is a head's, not a rank's piece of a wide layer


def _pieces(ev: Evidence) -> bool:
    """Every size mismatch shown is the checkpoint holding 1/k (k = 2, 4, 8, ...) of the model's
    layer weight on one axis of at least 64 rows: what one rank of k saves (Megatron, GLM,
    FSDP+TP). Tensor parallelism splits layers' weights and biases, never tokens or tables
    (``pos_embed``, ``cls_token``), which every rank holds whole."""
    if not ev.mismatched:
        return False
    for m in ev.mismatched:
        if m.key.rpartition(".")[2] not in ("weight", "bias"):
            return False
        c, s = m.checkpoint_shape, m.model_shape
        axes = [i for i in range(len(s)) if len(c) == len(s) and c[i] != s[i]]
        if len(axes) != 1 or c[axes[0]] < _PIECE_ROWS or s[axes[0]] % c[axes[0]]:
            return False
        k = s[axes[0]] // c[axes[0]]
        if k < 2 or k & (k - 1):
            return False
    return True


# Causes whose checkpoint holds keys the model lacks: under another name, prefix or container.
_NEED_UNEXPECTED = frozenset({
    "prefix_added", "prefix_missing", "wrapped_checkpoint", "wrong_model", "renamed_keys",
    "ema_weights", "optimizer_state_passed", "fused_projection"})


def possible(findings: list[Finding], ev: Evidence) -> list[Finding]:
    """The findings the message's format does not rule out.

    PyTorch <= 0.3 raised ``missing keys in state_dict: {...}`` only after every checkpoint key
    had been copied, so a file without the wrapper's prefix, another model's file or a training
    dict (whose keys would have been unexpected, and raised first) cannot be the cause.

    Args:
        findings: findings of the cause rules.
        ev: the evidence they were read from.

    Returns:
        The findings, without those that need checkpoint keys the message says were not there.
    """
    return [f for f in findings if not (ev.nothing_unexpected and f.label in _NEED_UNEXPECTED)]


def calibrate(findings: list[Finding], ev: Evidence) -> list[Finding]:
    """Every finding whose evidence is too thin to decide, lowered to a candidate (0.75).

    Args:
        findings: the findings of every rule, in rule order.
        ev: the evidence they were read from.

    Returns:
        The same findings; thin ones carry ``facts["thin"]`` with the reason.
    """
    out = []
    for f in findings:
        reason = thin_evidence(f, ev)
        out.append(f if reason is None else
                   replace(f, confidence=min(f.confidence, CANDIDATE),
                           facts={**f.facts, "thin": reason}))
    return out
