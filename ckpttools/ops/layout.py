"""The layout of a nested training checkpoint: which subtrees are state_dicts, of what kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ckpttools.entries import TensorEntry
from ckpttools.formats.kinds import structure_kind, subtree_kind
from ckpttools.formats.trainer import file_kind
from ckpttools.ops.state_dict import is_flat_state_dict

Kind = Literal["model", "optimizer", "scheduler", "scaler", "ema", "rng", "tensors", "dataloader",
               "loops", "callbacks", "config", "custom", "training_args", "trainer_state"]


@dataclass(frozen=True)
class StateDictInfo:
    """A subtree of a checkpoint that holds tensors.

    Attributes:
        key: dotted path of the subtree ("" for a checkpoint that is one flat state_dict).
        kind: what the subtree is for.
        tensors: how many tensors it holds.
        parameters: their total element count.
        nbytes: their total size in bytes.
    """

    key: str
    kind: Kind
    tensors: int
    parameters: int
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "tensors": self.tensors,
                "parameters": self.parameters, "bytes": self.nbytes}


def _kind(name: str, node: Any) -> Kind:
    by_file = file_kind(name)
    if by_file is not None:  # a trainer folder's file: optimizer.pt, random_states_0.pkl
        return structure_kind(node) or by_file[0]  # type: ignore[return-value]
    kind = subtree_kind(name, node)
    if kind is not None:
        return kind  # type: ignore[return-value]
    lowered = name.lower()
    if "ema" in lowered.split("_") or lowered.startswith("ema") or "teacher" in lowered:
        return "ema"
    return "model" if is_flat_state_dict(node) or isinstance(node, dict) else "tensors"


def _subtrees(tree: Any) -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return []
    out: list[tuple[str, Any]] = []
    for name, node in items:
        # Lightning keeps optimizers in a list: look one level into lists.
        if isinstance(node, (list, tuple)) and any(isinstance(v, dict) for v in node):
            out.extend((f"{name}.{i}", v) for i, v in enumerate(node))
        else:
            out.append((name, node))
    return out


def find_layout(tree: Any, tensors: tuple[TensorEntry, ...]) -> tuple[StateDictInfo, ...]:
    """Find the state_dicts in a checkpoint's tree.

    A checkpoint that is itself a flat state_dict gives one entry with key "". Otherwise each
    top-level subtree that holds tensors is one entry, classified by its name and shape.
    """
    whole = structure_kind(tree)
    if whole is not None:  # optimizer.pt, rng_state.pth on their own
        return (_info("", whole, tensors),) if tensors else ()  # type: ignore[arg-type]
    if is_flat_state_dict(tree) or not isinstance(tree, (dict, list, tuple)):
        return (_info("", "model", tensors),) if tensors else ()
    infos = []
    for name, node in _subtrees(tree):
        prefix = name + "."
        members = tuple(t for t in tensors if t.key.startswith(prefix) or t.key == name)
        if members:
            infos.append(_info(name, _kind(_first(name), node), members))
    return tuple(infos)


def _first(name: str) -> str:
    """The subtree's own name: a folder member keeps its file name (``optimizer.pt``)."""
    return name if file_kind(name) is not None else name.split(".")[0]


def _info(key: str, kind: Kind, members: tuple[TensorEntry, ...]) -> StateDictInfo:
    return StateDictInfo(key, kind, len(members), sum(t.numel for t in members),
                         sum(t.nbytes for t in members))
