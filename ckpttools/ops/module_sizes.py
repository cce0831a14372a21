"""Parameters by module: which blocks of a checkpoint hold its size (``inspect --plot``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ckpttools.entries import TensorEntry

# A group holding more than this share of the parameters is split one level further.
SPLIT_SHARE = 0.8
MAX_GROUPS = 12


@dataclass(frozen=True)
class ModuleSize:
    """One module's tensors: parameters (elements) and bytes."""

    module: str
    params: int
    nbytes: int
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "parameters": self.params, "bytes": self.nbytes,
                "tensors": self.tensors}


def module_sizes(tensors: Iterable[TensorEntry]) -> tuple[ModuleSize, ...]:
    """Elements and bytes per top-level module, in file order.

    The prefix every key shares (``model_state_dict.``) is left out. A module holding more than
    80% of the parameters (``transformer`` in GPT-2) is split into its children, once; beyond
    12 modules, the smallest are summed as ``(other)``.
    """
    entries = [t for t in tensors]
    if not entries:
        return ()
    parts = [t.key.split(".") for t in entries]
    common = _common_prefix(parts)
    depth = len(common) + 1
    groups = _group(entries, parts, depth, set())
    total = sum(g.params for g in groups) or 1
    big = {g.module for g in groups if g.params / total > SPLIT_SHARE}
    if big:
        groups = _group(entries, parts, depth, big)
    return _cap(groups, len(common))


def _common_prefix(parts: list[list[str]]) -> list[str]:
    first, out = parts[0], []
    for i, word in enumerate(first[:-1]):
        if all(len(p) > i + 1 and p[i] == word for p in parts):
            out.append(word)
        else:
            break
    return out


def _group(entries: list[TensorEntry], parts: list[list[str]], depth: int,
           split: set[str]) -> list[ModuleSize]:
    sums: dict[str, list[int]] = {}
    for entry, words in zip(entries, parts):
        name = ".".join(words[:depth])
        if name in split and len(words) > depth + 1:
            name = ".".join(words[:depth + 1])
        row = sums.setdefault(name, [0, 0, 0])
        row[0] += entry.numel
        row[1] += entry.nbytes
        row[2] += 1
    return [ModuleSize(name, p, b, n) for name, (p, b, n) in sums.items()]


def _cap(groups: list[ModuleSize], strip: int) -> tuple[ModuleSize, ...]:
    def short(name: str) -> str:
        return ".".join(name.split(".")[strip:]) or name

    groups = [ModuleSize(short(g.module), g.params, g.nbytes, g.tensors) for g in groups]
    if len(groups) <= MAX_GROUPS:
        return tuple(groups)
    keep = set(sorted(range(len(groups)), key=lambda i: -groups[i].params)[:MAX_GROUPS - 1])
    rest = [g for i, g in enumerate(groups) if i not in keep]
    other = ModuleSize(f"(other: {len(rest)} modules)", sum(g.params for g in rest),
                       sum(g.nbytes for g in rest), sum(g.tensors for g in rest))
    return (*(g for i, g in enumerate(groups) if i in keep), other)
