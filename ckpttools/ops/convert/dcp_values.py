"""The non-tensor values of a DCP output, as torch's own ``dcp.save`` stores them.

``dcp.load`` fills a state_dict by the fully qualified names torch's flattening gives it
(``torch.distributed.checkpoint._traverse.traverse_state_dict``): mappings are walked, a list
is walked only when it holds a mapping, a tensor or such a list, and anything else is one
leaf. A non-tensor leaf (``optim.param_groups.0.lr``, ``step``) is a bytes item holding
``torch.save(value)``; without one, ``dcp.load`` of the whole training state_dict raises
``Missing key in checkpoint state_dict``. The ckpttools manifest still carries the structure;
these items are what a plain ``dcp.load`` reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from typing import Any

from ckpttools.formats.manifest import Node
from ckpttools.formats.manifest_tree import decode_tree
from ckpttools.formats.writers.torch_zip import pickle_tree

_MAPPINGS = ("dict", "odict")


def _has_tensor(node: Node) -> bool:
    t = node["t"]
    if t == "tensor":
        return True
    if t in ("list", "tuple", "set"):
        return any(_has_tensor(c) for c in node["v"])
    if t in _MAPPINGS:
        return any(_has_tensor(v) for _, v in node["v"])
    return False


def _is_terminal(node: Node) -> bool:
    """torch's ``_is_terminal``: a mapping never is, a list when none of its entries is a
    tensor, a mapping or a list that is not terminal, anything else always."""
    t = node["t"]
    if t in _MAPPINGS:
        return False
    if t != "list":
        return True
    return not any(c["t"] == "tensor" or c["t"] in _MAPPINGS
                   or (c["t"] == "list" and not _is_terminal(c)) for c in node["v"])


def _leaves(path: tuple[str, ...], node: Node) -> Iterator[tuple[str, Node]]:
    t = node["t"]
    if t in _MAPPINGS:
        for k, v in node["v"]:
            yield from _leaves(path + (str(decode_tree(k, _no_tensor)),), v)
    elif _is_terminal(node):
        yield ".".join(path), node
    elif t in ("list", "tuple"):
        for i, child in enumerate(node["v"]):
            yield from _leaves(path + (str(i),), child)


def _no_tensor(name: str) -> Any:
    raise AssertionError(f"a tensor ({name}) in a mapping key")  # keys are never tensors


def dcp_values(root: Node, taken: Collection[str]) -> list[tuple[str, bytes]]:
    """``(fqn, data.pkl)`` for each non-tensor leaf torch's DCP flattening gives ``root``.

    Leaves that hold a tensor inside a tuple or a terminal list are left to the manifest (the
    tensor is written under its own name), and so are values whose FQN is ``taken`` (a tensor's
    name, the manifest's) or another value's (``{"a.b": 1, "a": {"b": 2}}``); a root that is not
    a mapping has no FQNs.
    """
    if root["t"] not in _MAPPINGS:
        return []
    leaves = [(fqn, node) for fqn, node in _leaves((), root)
              if node["t"] != "tensor" and not _has_tensor(node)]
    seen = Counter(fqn for fqn, _ in leaves)
    return [(fqn, pickle_tree(decode_tree(node, _no_tensor))) for fqn, node in leaves
            if fqn not in taken and seen[fqn] == 1]
