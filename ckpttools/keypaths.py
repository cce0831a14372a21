"""Flattened key paths: turning nested checkpoints into dotted keys and back, and compressing
repeated layers the way people read them (``layer.{0..11}.attn.weight``)."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ckpttools.entries import ObjectPlaceholder, TensorRef

def split_tensors(tree: Any, is_tensor: Callable[[Any], bool]) -> tuple[Any, list[tuple[str, Any]]]:
    """Flatten ``tree`` to dotted keys, replacing each tensor leaf by ``TensorRef(key)``.

    Dicts are always descended into; lists and tuples only when they hold tensors or containers
    (``param_groups.0.lr``), so a list of plain values (``param_groups.0.params``) is one leaf.
    Empty dicts are leaves.

    Returns:
        ``(tree with TensorRef leaves, [(key, original leaf)])`` in file order.
    """
    leaves: list[tuple[str, Any]] = []

    def walk(node: Any, prefix: str) -> Any:
        if is_tensor(node):
            leaves.append((prefix, node))
            return TensorRef(prefix)
        if isinstance(node, dict) and node:
            return same_mapping(node, [(k, walk(v, f"{prefix}.{k}" if prefix else str(k)))
                                       for k, v in node.items()])
        if isinstance(node, (list, tuple)) and any(
                is_tensor(v) or isinstance(v, (dict, list, tuple)) for v in node):
            out = [walk(v, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(node)]
            return tuple(out) if isinstance(node, tuple) else out
        leaves.append((prefix, node))
        return node

    return walk(tree, ""), leaves


def same_mapping(node: dict[Any, Any], pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A mapping of ``pairs`` of the same kind as ``node``: an ``OrderedDict`` stays one and keeps
    its instance attributes (a ``state_dict()``'s ``_metadata``); anything else becomes a dict."""
    if type(node) is OrderedDict:
        out: dict[Any, Any] = OrderedDict(pairs)
        out.__dict__.update(vars(node))
        return out
    return dict(pairs)


def iter_leaves(tree: Any) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted_key, leaf)`` for a reader's tree (``TensorRef`` leaves), flattened as
    ``split_tensors`` does."""
    yield from split_tensors(tree, lambda node: isinstance(node, TensorRef))[1]


def get_path(tree: Any, key: str) -> Any:
    """Follow a dotted ``key`` into a tree; list indices and int dict keys are matched by text.

    Keys that contain dots themselves (``"a.b"`` as one dict key) are matched greedily.

    Raises:
        KeyError: nothing lives at ``key``.
    """
    if key == "":
        return tree
    if isinstance(tree, dict):
        names = {str(k): k for k in tree}
        parts = key.split(".")
        for n in range(len(parts), 0, -1):  # longest dict key first
            head = ".".join(parts[:n])
            if head in names:
                try:
                    return get_path(tree[names[head]], ".".join(parts[n:]))
                except KeyError:
                    continue
    elif isinstance(tree, (list, tuple)):
        head, _, rest = key.partition(".")
        if head.isdigit() and int(head) < len(tree):
            return get_path(tree[int(head)], rest)
    raise KeyError(key)


_NUMBER = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def _ranges(numbers: list[int]) -> str:
    numbers = sorted(set(numbers))
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}..{numbers[-1]}"
    return ",".join(str(n) for n in numbers)


def compress_keys(items: Iterable[tuple[str, Any]]) -> list[tuple[str, Any, int]]:
    """Fold keys that differ only in layer numbers and share a value (shape, dtype ...).

    ``[("layer.0.w", s), ("layer.1.w", s)]`` becomes ``[("layer.{0..1}.w", s, 2)]``. The first
    numeric path component that varies is folded; order follows first appearance.
    """
    groups: dict[tuple[str, Any], list[tuple[int, str]]] = {}
    order: list[tuple[str, Any]] = []
    for key, value in items:
        match = _NUMBER.search(key)
        if match is None:
            group = (key, value)
            groups.setdefault(group, []).append((-1, key))
            if len(groups[group]) == 1:
                order.append(group)
            continue
        pattern = key[: match.start()] + "{}" + key[match.end():]
        group = (pattern, value)
        if group not in groups:
            groups[group] = []
            order.append(group)
        groups[group].append((int(match.group()), key))
    out: list[tuple[str, Any, int]] = []
    for pattern, value in order:
        members = groups[(pattern, value)]
        if len(members) == 1 or members[0][0] < 0:
            out.extend((k, value, 1) for _, k in members)
        else:
            out.append((pattern.replace("{}", "{" + _ranges([n for n, _ in members]) + "}"), value,
                        len(members)))
    return out


def is_placeholder(value: Any) -> bool:
    """Whether ``value`` stands for an object the reader did not execute."""
    return isinstance(value, ObjectPlaceholder)
