"""Index shifts in a ``Sequential``: a layer added or removed moves the indices of the layers
after it. Checkpoint and model layers of the same contents are aligned in order, from the front
and from the back; where the two alignments differ, a layer like its neighbours was added or
removed, and the shapes cannot tell which."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from ckpttools.ops.comparison import Table
from ckpttools.ops.model_spec import ModelSignature

Rule = tuple[str, str]  # (regex, replacement)


def _indexed(keys: Mapping[str, tuple[tuple[int, ...], str]]
             ) -> dict[str, dict[int, frozenset[tuple[str, tuple[int, ...]]]]]:
    """``{container: {index: {(rest, shape)}}}`` for every numeric key component."""
    out: dict[str, dict[int, set[tuple[str, tuple[int, ...]]]]] = defaultdict(lambda: defaultdict(set))
    for key, (shape, _) in keys.items():
        parts = key.split(".")
        for p, part in enumerate(parts[:-1]):
            if part.isdigit():
                out[".".join(parts[:p])][int(part)].add((".".join(parts[p + 1:]), tuple(shape)))
    return {c: {i: frozenset(s) for i, s in d.items()} for c, d in out.items()}


def index_shift_candidates(table: Table, sig: ModelSignature) -> list[list[list[Rule]]]:
    """Per ``Sequential`` container: checkpoint indices aligned in order with model indices of
    the same contents (a layer added or removed), as ``^c\\.i\\.`` -> ``c.j.`` rules; aligned
    from the front and from the back, two candidates when those differ (a layer like its
    neighbours was added, and shapes cannot tell which)."""
    ckpt = _indexed(table)
    model = _indexed({k.key: (k.shape, k.dtype) for k in sig.keys})
    out = []
    for container, c_items in ckpt.items():
        m_items = model.get(container)
        if not m_items or c_items == m_items:
            continue
        ways = [_shift_rules(container, _align(c_items, m_items, back)) for back in (False, True)]
        ways = [w for n, w in enumerate(ways) if w and w not in ways[:n]]
        if ways:
            out.append(ways)
    return out


def _align(c_items: dict[int, Any], m_items: dict[int, Any], back: bool) -> list[tuple[int, int]]:
    """Checkpoint index -> model index of the same contents, in order, greedily from one end."""
    pairs, m_order = [], sorted(m_items, reverse=back)
    pos = 0
    for i in sorted(c_items, reverse=back):
        j = next((n for n in range(pos, len(m_order)) if m_items[m_order[n]] == c_items[i]), None)
        if j is not None:
            pairs.append((i, m_order[j]))
            pos = j + 1
    return pairs


def _shift_rules(container: str, pairs: list[tuple[int, int]]) -> list[Rule]:
    moves = sorted((i, j) for i, j in pairs if i != j)
    if not moves:
        return []
    # apply in an order where no rule's output is a later rule's input
    moves.sort(key=lambda m: m[0], reverse=moves[0][1] > moves[0][0])
    head = re.escape(container) + r"\." if container else ""
    pre = container + "." if container else ""
    return [(f"^{head}{i}\\.", f"{pre}{j}.".replace("\\", "\\\\")) for i, j in moves]


def shift_choices(original: Table, table: Table, sig: ModelSignature
                  ) -> tuple[str, list[str]] | None:
    """A container whose indices were shifted (``original`` -> ``table``) and whose layers
    align with the model's in two ways filling as many keys: the saved indices, and the model's
    indices under each alignment (``"0, 2, 4"``, ``["0, 2, 6", "2, 4, 6"]``)."""
    before, after = _indexed(original), _indexed(table)
    model = _indexed({k.key: (k.shape, k.dtype) for k in sig.keys})
    for c, items in after.items():
        # a container whose layer count the moves changed is no shift of its layers
        if c not in before or c not in model or set(before[c]) == set(items) or \
                len(before[c]) != len(items):
            continue
        front, back = (sorted(_align(items, model[c], b)) for b in (False, True))
        if len(front) != len(back) or front == back:
            continue
        # shifts keep the order, so the n-th index after the moves is the n-th one saved
        saved = dict(zip(sorted(items), sorted(before[c])))
        pre = c + "." if c else ""
        return (", ".join(f"{pre}{saved[i]}" for i, _ in front),
                [", ".join(f"{pre}{j}" for _, j in way) for way in (front, back)])
    return None
