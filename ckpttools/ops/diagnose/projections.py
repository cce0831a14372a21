"""Cause rule for attention projections stored fused on one side and split on the other."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ckpttools.ops.diagnose.evidence import Evidence, Finding, segments as _segments

_SPLIT = {"q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v", "wq", "wk", "wv",
          "to_q", "to_k", "to_v", "q_lin", "k_lin", "v_lin", "gate_proj", "up_proj", "w1", "w3"}
_FUSED = {"qkv", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "wqkv", "to_qkv", "in_proj",
          "qkv_linear", "gate_up_proj", "w13", "kv", "kv_proj"}

def _split_parent(key: str) -> tuple[str, str] | None:
    parts = _segments(key)
    for i in range(len(parts) - 1, -1, -1):
        name = parts[i]
        if name in _SPLIT or name in _FUSED or name.startswith("in_proj"):
            parent = re.sub(r"\.\d+(?=\.|$)", ".#", ".".join(parts[:i]))
            return parent.rsplit(".", 1)[-1] if parent else "", name
    return None


def fused_projection(ev: Evidence) -> Finding | None:
    """One fused ``qkv`` projection on one side, separate ``q``/``k``/``v`` on the other."""
    def names(keys: Iterable[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for k in keys:
            if (hit := _split_parent(k)) is not None:
                out.setdefault(hit[0], set()).add(hit[1])
        return out
    miss, unexp = names(ev.missing), names(ev.unexpected)
    if one_sided := _split_only(ev) or _fused_only(ev):
        return one_sided
    for parent in set(miss) & set(unexp):
        a, b = miss[parent], unexp[parent]
        fused_a = any(n in _FUSED or n.startswith("in_proj") for n in a)
        fused_b = any(n in _FUSED or n.startswith("in_proj") for n in b)
        if fused_a != fused_b and (a | b) & _SPLIT:
            explained = {k for k in ev.missing + ev.unexpected if _split_parent(k)}
            return Finding("fused_projection", 0.9, frozenset(explained),
                           {"fused_side": "model" if fused_a else "checkpoint", "parent": parent,
                            "split": sorted((a | b) & _SPLIT),
                            "fused": sorted((a | b) - _SPLIT)})
    return None


def _split_only(ev: Evidence) -> Finding | None:
    """Only separate q/k/v weights and biases missing (or unexpected), the other side absent or cut.

    The checkpoint then holds them some other way, and a fused ``qkv`` is by far the usual one.
    """
    for side, keys, other in (("model", ev.missing, ev.unexpected),
                              ("checkpoint", ev.unexpected, ev.missing)):
        hits = [k for k in keys if (h := _split_parent(k)) and h[1] in _SPLIT
                and _segments(k)[-1] in ("weight", "bias") and _segments(k)[-2] == h[1]]
        split = {_split_parent(k)[1] for k in hits}  # type: ignore[index]
        # a key of one of these layers on the other side (q_lin.scale) says the file holds the
        # layer itself, under other leaves: not fused
        layers = {k.rpartition(".")[0] + "." for k in hits}
        if any(o.startswith(tuple(layers)) for o in other):
            continue
        if keys and len(hits) == len(keys) and len(split) >= 3 and not (other and not ev.truncated):
            return Finding("fused_projection", 0.75, frozenset(hits),
                           {"fused_side": "checkpoint" if side == "model" else "model",
                            "parent": _split_parent(hits[0])[0],  # type: ignore[index]
                            "split": sorted(split), "fused": []})
    return None


def _fused_only(ev: Evidence) -> Finding | None:
    """Only fused ``qkv`` projections missing (or unexpected), the other side absent or cut.

    The name says the layer computes several projections at once; a checkpoint without it most
    often holds them split. Below the decision threshold: the split side is not shown.
    """
    for side, keys, other in (("model", ev.missing, ev.unexpected),
                              ("checkpoint", ev.unexpected, ev.missing)):
        # nn.MultiheadAttention's own in_proj is not a sign: missing whole layers show it too
        hits = [k for k in keys if (h := _split_parent(k)) and h[1] in _FUSED and h[1] != "in_proj"
                and _segments(k)[-1] in ("weight", "bias")]
        if keys and len(hits) == len(keys) and not (other and not ev.truncated) and not ev.mismatched:
            name = _split_parent(hits[0])
            return Finding("fused_projection", 0.7, frozenset(hits),
                           {"fused_side": side, "parent": name[0] if name else "",
                            "split": [], "fused": sorted({_split_parent(k)[1] for k in hits})})  # type: ignore[index]
    return None
