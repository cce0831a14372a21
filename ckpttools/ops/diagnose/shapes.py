"""Cause rules that read shapes: a head of another size, another depth or width of the model."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ckpttools.ops.diagnose.error_text import ShapeMismatch
from ckpttools.ops.diagnose.evidence import Evidence, Finding, numel, segments

_HEAD = re.compile(r"(^|[._])(head|heads|fc|classifier|cls|logits|class\w*|score|lm_head|output"
                   r"|embed_tokens|word_embeddings|wte|tok_embeddings|tok_emb|shared|vocab\w*"
                   r"|embeddings|decoder|_proposal_\w+|bbox_pred|cls_score)([._]|$)")
_VOCAB = re.compile(r"embed|vocab|lm_head|shared|wte|tok_")
_POS = re.compile(r"pos_embed|position_embedding|pos_emb|positional_embedding|absolute_pos"
                  r"|relative_position_bias_table|position_embeddings|rel_pos")


def _real(ev: Evidence) -> list[ShapeMismatch]:
    """Mismatches between two real tensors of other sizes.

    Not empty or one-element placeholders in the checkpoint (partitioned saves), not the same
    elements in another layout (transposed, permuted or reshaped tensors).
    """
    return [m for m in ev.mismatched
            if numel(m.checkpoint_shape) > 1 and numel(m.model_shape) > 0
            and numel(m.checkpoint_shape) != numel(m.model_shape)]


def _only_dim0(m: ShapeMismatch) -> bool:
    c, s = m.checkpoint_shape, m.model_shape
    return len(c) == len(s) and len(c) >= 1 and c[0] != s[0] and c[1:] == s[1:]


def head_size_mismatch(ev: Evidence) -> Finding | None:
    """A classifier or vocabulary head of another size (only the output dimension differs)."""
    mm = _real(ev)
    if not mm or len(mm) != len(ev.mismatched) or len(mm) > 6 or not all(map(_only_dim0, mm)):
        return None
    headish = [m for m in mm if _HEAD.search(m.key)]
    vocab = any(_VOCAB.search(m.key) for m in mm)
    sizes = (mm[0].checkpoint_shape[0], mm[0].model_shape[0])
    padded = vocab and any(n % 64 == 0 for n in sizes) and abs(sizes[0] - sizes[1]) < 1024
    conf = 0.7 + (0.2 if 2 * len(headish) >= len(mm) else 0.0)
    return Finding("head_size_mismatch", conf, frozenset(m.key for m in mm),
                   {"keys": [m.key for m in mm], "checkpoint_size": sizes[0], "model_size": sizes[1],
                    "vocab": vocab, "padded": padded})


def _depth(keys: Iterable[str]) -> tuple[str, int, int] | None:
    """``blocks.{4..7}.*`` -> ``("blocks", 4, 7)``: keys all in layers from N >= 1 on."""
    groups: set[str] = set()
    numbers: list[int] = []
    for key in keys:
        parts = segments(key)
        i = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if i is None:
            return None
        groups.add(".".join(parts[:i]))
        numbers.append(int(parts[i]))
    if not numbers or len(groups) > 2 or min(numbers) < 1:
        return None
    return sorted(groups)[0], min(numbers), max(numbers)


def _width(mm: list[ShapeMismatch]) -> tuple[float, bool]:
    ratios = Counter(round(c / s, 3) for m in mm
                     for c, s in zip(m.checkpoint_shape, m.model_shape) if c != s and s)
    ratio, n = ratios.most_common(1)[0] if ratios else (1.0, 0)
    return ratio, n >= 0.6 * sum(ratios.values())


def _shape_variant(ev: Evidence) -> Finding | None:
    mm = _real(ev)
    if not mm or len(mm) < 0.5 * len(ev.mismatched):
        return None
    keys = frozenset(m.key for m in mm)
    if all(_POS.search(m.key) for m in mm):
        return Finding("architecture_variant", 0.86, keys,
                       {"kind": "pos_grid", "keys": [m.key for m in mm],
                        "checkpoint_shape": mm[0].checkpoint_shape, "model_shape": mm[0].model_shape})
    stem = [m for m in mm if len(m.model_shape) >= 3 and len(m.checkpoint_shape) == len(m.model_shape)
            and m.model_shape[0] == m.checkpoint_shape[0] and m.model_shape[2:] == m.checkpoint_shape[2:]]
    if stem and len(stem) == len(mm) <= 2:
        return Finding("architecture_variant", 0.86, keys,
                       {"kind": "in_chans", "keys": [m.key for m in mm],
                        "checkpoint_channels": mm[0].checkpoint_shape[1],
                        "model_channels": mm[0].model_shape[1]})
    if len(mm) <= 6 and all(map(_only_dim0, mm)):
        return None  # that is a head of another size
    ratio, consistent = _width(mm)
    return Finding("architecture_variant", 0.8 + (0.05 if consistent else 0.0), keys,
                   {"kind": "width", "count": len(mm), "examples": [m.key for m in mm[:3]],
                    "ratio": ratio, "consistent": consistent})


def architecture_variant(ev: Evidence) -> Finding | None:
    """Another width of the same architecture, another input size (grid) or input channels."""
    return _shape_variant(ev)


def another_depth(ev: Evidence) -> Finding | None:
    """Another depth: the extra keys all sit in layers N and up (runs on unexplained keys)."""
    for side, keys, other in (("missing", ev.missing, ev.unexpected),
                              ("unexpected", ev.unexpected, ev.missing)):
        depth = _depth(keys) if keys and not other else None
        if depth is not None:
            group, low, high = depth
            return Finding("architecture_variant", 0.78, frozenset(keys),
                           {"kind": "depth", "side": side, "group": group, "first": low,
                            "last": high, "count": len(keys), "examples": list(keys[:3])})
    return None
