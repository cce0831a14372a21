"""Finding the model's state_dict inside a checkpoint.

A checkpoint is either a flat state_dict (``{"layer.weight": ...}``) or a training checkpoint
that nests it under a well-known key (``{"state_dict": {...}, "optimizer": {...}, "epoch": 3}``).
``find_state_dict`` works out which, from the reader's ``tree()`` (metadata only, no tensor
data), and says how it decided, so that every command can tell the user which part it used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ckpttools.entries import Entry, ObjectEntry, ObjectPlaceholder, TensorEntry, TensorRef
from ckpttools.errors import KeyNotFoundError
from ckpttools.formats.base import CheckpointReader
from ckpttools.formats.kinds import structure_kind, subtree_kind
from ckpttools.keypaths import get_path, iter_leaves, split_tensors

if TYPE_CHECKING:
    import torch

# Where training code conventionally keeps the model's weights, most specific first.
STATE_DICT_KEYS = (
    "state_dict", "model_state_dict", "model", "module", "net", "network", "model_ema",
    "ema", "ema_state_dict", "state_dict_ema", "params", "weights", "generator", "student",
)
# Keys that hold training state rather than the model; never picked as the state_dict.
NON_MODEL_KEYS = (
    "optimizer", "optimizer_state_dict", "optimizer_states", "optim", "lr_scheduler", "scheduler",
    "lr_schedulers", "scaler", "grad_scaler", "rng_state", "rng_states", "callbacks", "loops",
)

How = Literal["top-level", "key", "found"]


@dataclass(frozen=True)
class StateDictView:
    """Where a checkpoint's state_dict lives and what it holds.

    Attributes:
        prefix: dotted path of the state_dict in the checkpoint (``""`` at the top level).
        entries: tensor entries with keys relative to the state_dict, i.e. the keys
            ``load_state_dict`` sees, in file order.
        how: ``top-level`` (the checkpoint is the state_dict), ``key`` (given by the caller) or
            ``found`` (picked by name from ``STATE_DICT_KEYS``).
        candidates: other places that looked like a state_dict (``ema`` next to ``model``).
        objects: non-tensor entries inside the state_dict (``_extra_state`` ...), relative keys.
    """

    prefix: str
    entries: tuple[TensorEntry, ...]
    how: How
    candidates: tuple[str, ...] = ()
    objects: tuple[ObjectEntry, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        # lets callers write ``prefix, entries = find_state_dict(reader)``
        return iter((self.prefix, self.entries))

    @property
    def nested(self) -> bool:
        """Whether the state_dict sits under a key rather than at the top level."""
        return self.prefix != ""

    def source_key(self, key: str) -> str:
        """The reader's key for a state_dict ``key`` (what ``reader.load`` takes)."""
        return f"{self.prefix}.{key}" if self.prefix else key

    def describe(self) -> str:
        """One line for the user: which part of the checkpoint is the state_dict."""
        if not self.prefix:
            return "the checkpoint is the state_dict"
        origin = "given with --key" if self.how == "key" else "found by name"
        return f"state_dict under '{self.prefix}' ({origin})"


def _tensor_count(node: Any) -> int:
    return sum(1 for _, leaf in iter_leaves(node) if isinstance(leaf, TensorRef))


def is_flat_state_dict(tree: Any) -> bool:
    """A dict whose values are (mostly) tensors: the checkpoint is a state_dict itself."""
    if not isinstance(tree, dict) or not tree:
        return False
    direct = sum(1 for v in tree.values() if isinstance(v, TensorRef))
    return direct > 0 and direct >= 0.5 * len(tree)


def _candidates(tree: dict[Any, Any]) -> list[str]:
    names = {str(k): k for k in tree}
    found = [n for n in STATE_DICT_KEYS if n in names and _tensor_count(tree[names[n]]) > 0]
    if found:
        return found
    # no known name: the one subtree with tensors that is not training state
    # nor a subtree whose keys or name say it is an optimizer, scheduler, RNG... (a folder's
    # optimizer.pt next to model.safetensors)
    rest = [str(k) for k, v in tree.items()
            if str(k) not in NON_MODEL_KEYS and isinstance(v, dict) and _tensor_count(v) > 0
            and subtree_kind(str(k), v) is None]
    return rest if len(rest) == 1 else []


def _unflatten_top(tree: Any) -> Any:
    """Group a flat tree's dotted keys by first component when it is a flattened training
    checkpoint (``model.x``, ``optimizer.state.0.exp_avg``, ``epoch``), as readers without a
    nested ``tree()`` report it; a flat state_dict is returned as it is."""
    if not isinstance(tree, dict):
        return tree
    if _UNFLAT and _UNFLAT[0] is tree:  # asked twice of one reader's tree (20,000 keys)
        return _UNFLAT[1]
    grouped = _group_top(tree)
    _UNFLAT[:] = [tree, grouped]
    return grouped


_UNFLAT: list[Any] = []  # [tree, its grouping]: a reader's tree is never changed after reading


def _group_top(tree: dict[Any, Any]) -> Any:
    firsts = {k.partition(".")[0] for k in map(str, tree)}
    has_model = any(f in STATE_DICT_KEYS for f in firsts)
    has_other = any(f in NON_MODEL_KEYS for f in firsts) or any(
        not isinstance(v, (TensorRef, dict)) for v in tree.values())
    if not (has_model and has_other and len(firsts) > 1):
        return tree
    grouped: dict[str, Any] = {}
    for k, v in tree.items():
        head, _, rest = str(k).partition(".")
        if rest:
            sub = grouped.setdefault(head, {})
            if isinstance(sub, dict):
                sub[rest] = v
        else:
            grouped[head] = v
    return grouped


def _subtree(tree: Any, prefix: str) -> Any:
    if not prefix:
        return tree
    try:
        return get_path(tree, prefix)
    except KeyError:
        return get_path(_unflatten_top(tree), prefix)


def find_prefix(tree: Any) -> tuple[str, list[str]]:
    """The dotted path of the most likely state_dict, and the other candidates."""
    prefix: list[str] = []
    others: list[str] = []
    node = _unflatten_top(tree)
    if structure_kind(node) is not None:  # an optimizer / scheduler / RNG state on its own
        return "", []
    for _ in range(3):  # {"state_dict": {"model": {...}}} happens; deeper does not
        if not isinstance(node, dict) or is_flat_state_dict(node):
            break
        found = _candidates(node)
        if not found:
            break
        base = ".".join(prefix)
        others += [f"{base}.{n}" if base else n for n in found[1:]]
        prefix.append(found[0])
        node = node[{str(k): k for k in node}[found[0]]]
    return ".".join(prefix), others


def _view(reader: CheckpointReader, node: Any, prefix: str, how: How,
          candidates: tuple[str, ...] = ()) -> StateDictView:
    by_key: dict[str, Entry] = {e.key: e for e in reader.entries()}
    tensors: list[TensorEntry] = []
    objects: list[ObjectEntry] = []
    for rel, leaf in iter_leaves(node):
        if isinstance(leaf, TensorRef):
            entry = by_key.get(leaf.key)
            if isinstance(entry, TensorEntry):
                # a top-level state_dict's keys are already relative: no copy per tensor
                tensors.append(entry if entry.key == rel else dataclasses.replace(entry, key=rel))
        elif not isinstance(leaf, ObjectPlaceholder):
            full = f"{prefix}.{rel}" if prefix else rel
            obj = by_key.get(full)
            if isinstance(obj, ObjectEntry):
                objects.append(dataclasses.replace(obj, key=rel))
    return StateDictView(prefix, tuple(tensors), how, candidates, tuple(objects))


def find_state_dict(reader: CheckpointReader, key: str | None = None) -> StateDictView:
    """Find the model's state_dict in a checkpoint, reading metadata only.

    Args:
        reader: an open checkpoint.
        key: dotted path of the state_dict (``--key``); found by name when omitted.

    Returns:
        The state_dict's location and its tensor entries with keys relative to it. Unpacks as
        ``prefix, entries``.

    Raises:
        CkptError: ``key`` does not exist or holds no tensors.

    Example:
        >>> with open_checkpoint("last.ckpt") as ckpt:
        ...     view = find_state_dict(ckpt)
        >>> view.prefix, len(view.entries)
        ('state_dict', 122)
    """
    return _view(reader, *_locate(reader, key))


def _locate(reader: CheckpointReader, key: str | None) -> tuple[Any, str, How, tuple[str, ...]]:
    """``find_state_dict``'s choice: ``(subtree, prefix, how, other candidates)``."""
    tree = reader.tree()
    if key is not None:
        try:
            node = _subtree(tree, key)
        except KeyError as e:
            raise KeyNotFoundError(f"{reader.path}: no entry '{key}' in the checkpoint; "
                            "run ckpttools inspect to see its keys") from e
        if _tensor_count(node) == 0:
            raise KeyNotFoundError(f"{reader.path}: '{key}' holds no tensors; "
                            "give --key the path of the model's state_dict")
        return node, key, "key", ()
    not_model = structure_kind(_unflatten_top(tree))
    if not_model is not None:
        raise KeyNotFoundError(f"{reader.path}: holds {_KIND_TEXT[not_model]}, not model "
                               "weights; give the model's weights file (or --key)")
    trainer_key = _trainer_model_key(reader)
    if trainer_key is not None:
        return _subtree(tree, trainer_key), trainer_key, "found", ()
    prefix, others = find_prefix(tree)
    return _subtree(tree, prefix), prefix, "found" if prefix else "top-level", tuple(others)


_KIND_TEXT = {"optimizer": "an optimizer state (state + param_groups)",
              "scheduler": "an LR scheduler state", "scaler": "a grad scaler state",
              "rng": "RNG states"}


def _trainer_model_key(reader: CheckpointReader) -> str | None:
    """The model piece of a trainer layout (``model.safetensors`` of an HF Trainer folder)."""
    from ckpttools.formats.trainer import describe_trainer

    layout = describe_trainer(reader)
    return layout.model_key if layout is not None else None


def default_state_dict_key(reader: CheckpointReader) -> str | None:
    """The key of the state_dict commands pick without ``--key``; None when the checkpoint holds
    no model weights (an optimizer state alone) or no tensors."""
    try:
        node, prefix, _, _ = _locate(reader, None)
    except KeyNotFoundError:
        return None
    # what ``find_state_dict(reader).entries`` would hold, without building the entries
    by_key = {e.key: e for e in reader.entries() if isinstance(e, TensorEntry)}
    has = any(isinstance(leaf, TensorRef) and leaf.key in by_key for _, leaf in iter_leaves(node))
    return prefix if has else None


def state_dict_candidates(reader: CheckpointReader) -> list[StateDictView]:
    """Every plausible state_dict in the checkpoint: the found one first, then the others.

    ``diff`` uses this to pick the candidate that best matches a model.
    """
    first = find_state_dict(reader)
    views = [first]
    for name in first.candidates:
        views.append(find_state_dict(reader, name))
    if first.prefix:
        # the whole checkpoint is a candidate too (a flat state_dict with a 'model.' prefix)
        whole = _view(reader, reader.tree(), "", "top-level")
        views.append(whole)
    return views


class InMemoryReader(CheckpointReader):
    """A reader over a checkpoint already in memory (a dict of tensors, possibly nested).

    Lets the Python API take ``model.state_dict()`` or a loaded training checkpoint wherever it
    takes an open file.
    """

    lazy = True

    def __init__(self, state: Mapping[str, Any], path: str = "<state_dict>") -> None:
        super().__init__(path, trust=True)
        self._state = state
        import torch

        self._tree, leaves = split_tensors(state, lambda node: isinstance(node, torch.Tensor))
        self._tensors: dict[str, torch.Tensor] = {
            k: v for k, v in leaves if isinstance(v, torch.Tensor)}

    def entries(self) -> tuple[Entry, ...]:
        out: list[Entry] = []
        for key, leaf in iter_leaves(self._tree):
            if isinstance(leaf, TensorRef):
                t = self._tensors[leaf.key]
                out.append(TensorEntry(leaf.key, str(t.dtype).removeprefix("torch."),
                                       tuple(t.shape), t.numel() * t.element_size()))
            else:
                safe = leaf if isinstance(leaf, (int, float, str, bool, type(None))) else repr(leaf)
                out.append(ObjectEntry(key, type(leaf).__name__, safe))
        return tuple(out)

    def load(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def tree(self) -> Any:
        return self._tree


def as_reader(source: CheckpointReader | Mapping[str, Any]) -> CheckpointReader:
    """Accept an open reader or an in-memory state_dict / checkpoint dict."""
    if isinstance(source, CheckpointReader):
        return source
    if isinstance(source, Mapping):
        return InMemoryReader(source)
    raise TypeError(f"expected a CheckpointReader or a dict of tensors, got {type(source).__name__}")
