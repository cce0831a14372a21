"""``inspect``: what a checkpoint is and what it holds, from metadata alone."""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ckpttools.entries import GlobalRef, ObjectEntry, TensorEntry
from ckpttools.errors import KeyNotFoundError
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.trainer import TrainerLayout, describe_trainer
from ckpttools.keypaths import get_path, iter_leaves
from ckpttools.ops.layout import StateDictInfo, find_layout
from ckpttools.ops.module_sizes import ModuleSize, module_sizes
from ckpttools.ops.state_dict import default_state_dict_key

if TYPE_CHECKING:  # the stats module is imported for --stats only
    from ckpttools.ops.tensor_stats import TensorStats


@dataclass(frozen=True)
class InspectResult:
    """What ``inspect`` found.

    Attributes:
        path: the checkpoint as given.
        format: the detected format's CLI name.
        is_lazy: whether entries were listed without reading tensor data.
        key: the ``--key`` subtree shown ("" for the whole checkpoint); keys are relative to it.
        tensors: the tensor entries shown (after ``--key`` and ``--filter``), in file order.
        objects: the non-tensor values shown.
        layout: the state_dicts of the whole checkpoint.
        default_state_dict: the state_dict other commands pick without ``--key``.
        globals: every global the checkpoint's pickles reference.
        metadata: format-level string metadata.
        stats: per-tensor statistics, when asked for.
        weights_only_hint: the ``add_safe_globals`` line ``torch.load(weights_only=True)`` needs.
        trainer: the trainer layout (framework, step, epoch, pieces), when a trainer wrote it.
    """

    path: str
    format: str
    is_lazy: bool
    key: str
    tensors: tuple[TensorEntry, ...]
    objects: tuple[ObjectEntry, ...]
    layout: tuple[StateDictInfo, ...]
    default_state_dict: str | None
    globals: tuple[GlobalRef, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    stats: tuple[TensorStats, ...] | None = None
    weights_only_hint: str | None = None
    trainer: TrainerLayout | None = None

    @property
    def unsafe_globals(self) -> tuple[GlobalRef, ...]:
        return tuple(g for g in self.globals if g.safety == "unsafe")

    @property
    def unknown_globals(self) -> tuple[GlobalRef, ...]:
        return tuple(g for g in self.globals if g.safety == "unknown")

    @property
    def ok(self) -> bool:
        """True only when every global is proven safe: one that runs code or is off the
        allowlist fails closed (docs/safety.md)."""
        return not self.unsafe_globals and not self.unknown_globals

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted(set(map(_DEVICE, self.tensors))))

    @property
    def meta_tensors(self) -> int:
        """Tensors saved from the meta device: a shape and dtype, no data (0 bytes stored)."""
        if "meta" not in self.devices:
            return 0
        return sum(1 for d in map(_DEVICE, self.tensors) if d == "meta")

    @property
    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for dtype, nbytes in map(_DTYPE_BYTES, self.tensors):
            out[dtype] = out.get(dtype, 0) + nbytes
        return dict(sorted(out.items()))

    @property
    def parameters(self) -> int:
        """Elements of the tensors shown, each tensor counted (as ``TensorEntry.numel``)."""
        return sum(map(math.prod, map(_SHAPE, self.tensors)))

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors shown, each tensor counted."""
        return sum(map(_NBYTES, self.tensors))

    @property
    def module_sizes(self) -> tuple[ModuleSize, ...]:
        """Parameters and bytes per top-level module, in file order (``module_sizes``)."""
        return module_sizes(self.tensors)

    @property
    def shared_storage(self) -> int:
        """Tensors that share a storage record with another (tied weights, views of one tensor),
        in the torch formats, whose entries name their storage record; the totals count each."""
        if self.format not in ("torch-zip", "torch-legacy"):
            return 0
        seen = Counter(filter(None, map(_LOCATION, self.tensors)))
        return sum(n for n in seen.values() if n > 1)

    def to_dict(self, *, tensors: bool = True) -> dict[str, Any]:
        """The result as JSON-ready data; ``tensors=False`` leaves the per-tensor records out
        (the JSON report encodes them itself, see ``render.inspect``)."""
        return {
            "path": self.path,
            "format": self.format,
            "trainer": None if self.trainer is None else self.trainer.to_dict(),
            "lazy": self.is_lazy,
            "key": self.key,
            "devices": list(self.devices),
            "state_dicts": [s.to_dict() for s in self.layout],
            "default_state_dict": self.default_state_dict,
            "objects": [{"key": o.key, "type": o.type_name, "value": o.value} for o in self.objects],
            "tensors": [tensor_dict(t) for t in self.tensors] if tensors else None,
            "totals": {
                "tensors": len(self.tensors),
                "shared_storage": self.shared_storage,
                "meta_tensors": self.meta_tensors,
                "parameters": self.parameters,
                "bytes": self.nbytes,
                "bytes_by_dtype": self.bytes_by_dtype,
            },
            "metadata": dict(self.metadata),
            "globals": [{"name": g.qualname, "safety": g.safety, "pickle": g.pickle,
                         "reason": g.reason} for g in self.globals],
            "unsafe": not self.ok,
            "weights_only_hint": self.weights_only_hint,
            "stats": None if self.stats is None else [s.to_dict() for s in self.stats],
        }


# one C-level pass per total over 20,000 entries, without a generator's frame per item
_DEVICE, _SHAPE, _NBYTES, _LOCATION = (attrgetter(n) for n in ("device", "shape", "nbytes",
                                                                 "location"))
_DTYPE_BYTES = attrgetter("dtype", "nbytes")


def tensor_dict(t: TensorEntry) -> dict[str, Any]:
    return {"key": t.key, "dtype": t.dtype, "shape": list(t.shape), "numel": t.numel,
            "bytes": t.nbytes, "location": t.location, "device": t.device}


def _relative(key: str, prefix: str) -> str | None:
    if not prefix:
        return key
    if key == prefix:
        return ""
    return key[len(prefix) + 1:] if key.startswith(prefix + ".") else None


def _select(entries: tuple[Any, ...], key: str, pattern: str | None) -> tuple[Any, ...]:
    if not key and not pattern:
        return tuple(entries)  # every entry, as it is
    out = []
    for e in entries:
        rel = _relative(e.key, key)
        if rel is None or (pattern and not fnmatch.fnmatchcase(rel, pattern)):
            continue
        out.append(type(e)(**{**e.__dict__, "key": rel}) if key else e)
    return tuple(out)


def inspect_checkpoint(
    reader: CheckpointReader,
    *,
    key: str | None = None,
    pattern: str | None = None,
    with_stats: bool = False,
    on_progress: Callable[[int], None] | None = None,
    allow: tuple[str, ...] | frozenset[str] = (),
) -> InspectResult:
    """Describe a checkpoint from its metadata; tensor data is read only for ``with_stats``.

    Args:
        reader: an open checkpoint.
        key: a dotted path into the checkpoint; only that subtree is shown.
        pattern: a glob (``*.weight``) that shown keys must match.
        with_stats: compute min/max/mean/std and NaN/Inf counts, one tensor at a time.
        on_progress: called with the byte count of each tensor as its statistics are done.
        allow: globals the user treats as safe (``mypkg.Config`` or ``mypkg.*``); they lift
            ``unknown`` globals only.

    Returns:
        An ``InspectResult``.

    Raises:
        CkptError: ``key`` names nothing in the checkpoint, or the file is unreadable.

    Example:
        >>> with open_checkpoint("ckpt.pth") as r:
        ...     result = inspect_checkpoint(r, key="model_state_dict")
    """
    entries = reader.entries()
    tree = reader.tree()
    prefix = key or ""
    if prefix:
        try:
            get_path(tree, prefix)
        except KeyError:
            raise KeyNotFoundError(f"{reader.path}: no entry '{prefix}' in the checkpoint; top-level "
                            f"keys: {_top_keys(tree)}") from None
    tensor_entries = tuple(e for e in entries if isinstance(e, TensorEntry))
    layout = find_layout(tree, tensor_entries)
    tensors = _select(tensor_entries, prefix, pattern)
    stats = None
    if with_stats:
        full_keys = [f"{prefix}.{t.key}" if prefix and t.key else prefix or t.key for t in tensors]
        from ckpttools.ops.tensor_stats import compute_stats

        stats = compute_stats(reader, full_keys, on_progress=on_progress, shown_keys=[t.key for t in tensors])
    pickle_globals = _allowed(reader.pickle_globals(), frozenset(allow))
    return InspectResult(
        path=reader.path,
        format=reader.format.value,
        is_lazy=reader.lazy,
        key=prefix,
        tensors=tensors,
        objects=_select(tuple(e for e in entries if isinstance(e, ObjectEntry)), prefix, pattern),
        layout=layout,
        default_state_dict=default_state_dict_key(reader) if layout else None,
        globals=pickle_globals,
        metadata=reader.metadata(),
        stats=stats,
        # a DCP folder is read by torch's DCP reader, which unpickles .metadata itself:
        # torch.load(weights_only=True) is no way to read it, so no line for it
        weights_only_hint=None if reader.format is Format.DCP else _hint(pickle_globals),
        trainer=describe_trainer(reader),
    )


def _allowed(refs: tuple[GlobalRef, ...], allow: frozenset[str]) -> tuple[GlobalRef, ...]:
    from ckpttools.formats.pickle.safety import is_allowed_by_user

    return tuple(replace(g, safety="safe", reason="allowed by --allow / allow-globals")
                 if g.safety == "unknown" and is_allowed_by_user(g.qualname, allow) else g
                 for g in refs)


def _hint(pickle_globals: tuple[GlobalRef, ...]) -> str | None:
    if not pickle_globals:
        return None  # nothing to allow (and no pickle modules to import)
    try:
        from ckpttools.formats.pickle.walk import safe_globals_hint
    except ImportError:  # pickle-free formats need no hint
        return None
    return safe_globals_hint(pickle_globals)


def _top_keys(tree: Any) -> str:
    names = [str(k) for k, _ in iter_leaves(tree)] if not isinstance(tree, dict) else [str(k) for k in tree]
    shown = ", ".join(sorted({n.split(".")[0] for n in names})[:8])
    return shown or "(none)"
