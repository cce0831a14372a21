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
            pairs = []
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if is_tensor(v):  # the common leaf, without a call (20,000 tensors)
                    leaves.append((key, v))
                    pairs.append((k, TensorRef(key)))
                else:
                    pairs.append((k, walk(v, key)))
            return same_mapping(node, pairs)
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
    ``split_tensors`` does (without building its new tree: 20,000 leaves are common)."""
    out: list[tuple[str, Any]] = []
    _collect(tree, "", out)
    return iter(out)


def _collect(node: Any, prefix: str, out: list[tuple[str, Any]]) -> None:
    """``split_tensors``'s leaves of a tree whose tensors are ``TensorRef``s, into ``out``."""
    if isinstance(node, TensorRef):
        out.append((prefix, node))
    elif isinstance(node, dict) and node:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if type(v) is TensorRef:  # the common leaf, without a call
                out.append((key, v))
            else:
                _collect(v, key, out)
    elif isinstance(node, (list, tuple)) and any(
            isinstance(v, (TensorRef, dict, list, tuple)) for v in node):
        for i, v in enumerate(node):
            _collect(v, f"{prefix}.{i}" if prefix else str(i), out)
    else:
        out.append((prefix, node))


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
    """Fold the keys of repeated layers: layers of one structure that differ only in their number.

    ``layer.0.w``, ``layer.0.b``, ``layer.1.w``, ``layer.1.b`` become ``layer.{0..1}.w`` and
    ``layer.{0..1}.b`` (count 2) when both layers hold the same keys with the same values
    (shape, dtype ...). A layer is the key up to its first number; layers whose key sets or
    values differ (a conv and a BatchNorm in one ``nn.Sequential``) are never folded together.
    Rows keep the order of the keys, a folded row at the place of its first layer's key.
    """
    # one regex search per key; the two passes below share it
    rows = []
    layers: dict[tuple[str, int], list[tuple[str, Any]]] = {}
    search = _NUMBER.search
    for key, value in items:
        match = search(key)
        if match is None:
            rows.append((key, value, None, ""))
            continue
        layer = (key[: match.start()], int(match.group()))
        rest = key[match.end():]
        rows.append((key, value, layer, rest))
        members = layers.get(layer)
        if members is None:
            layers[layer] = [(rest, value)]
        else:
            members.append((rest, value))
    # layers of one stem with the same (suffix, value) sequence repeat one structure
    repeats: dict[tuple[str, tuple[tuple[str, Any], ...]], list[int]] = {}
    for (stem, number), members in layers.items():
        repeats.setdefault((stem, tuple(members)), []).append(number)
    folded: dict[tuple[str, int], tuple[int, str, int]] = {}  # layer -> (first, ranges, count)
    for (stem, _), numbers in repeats.items():
        if len(numbers) > 1:
            fold = (numbers[0], _ranges(numbers), len(numbers))
            for n in numbers:
                folded[(stem, n)] = fold
    out: list[tuple[str, Any, int]] = []
    for key, value, layer, rest in rows:
        fold = folded.get(layer) if layer is not None else None
        if fold is None:
            out.append((key, value, 1))
        elif fold[0] == layer[1]:  # type: ignore[index]  # the first layer stands for all
            out.append((f"{layer[0]}{{{fold[1]}}}{rest}", value, fold[2]))  # type: ignore[index]
    return out


def is_placeholder(value: Any) -> bool:
    """Whether ``value`` stands for an object the reader did not execute."""
    return isinstance(value, ObjectPlaceholder)
