"""The evidence every cause rule reads, built from an error text or from files, and findings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any



def segments(key: str) -> list[str]:
    """``a.b.0.w`` -> ``["a", "b", "0", "w"]``."""
    return key.split(".")


def numel(shape: Iterable[int]) -> int:
    """Number of elements of a tensor of ``shape``."""
    return math.prod(shape)


def packed_4bit(checkpoint_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> bool:
    """One side is the other's tensor packed two 4-bit values to a byte, as a column: bitsandbytes'
    ``Params4bit`` holds a ``[4096, 1024]`` weight as ``[2097152, 1]``."""
    for packed, full in ((model_shape, checkpoint_shape), (checkpoint_shape, model_shape)):
        if len(packed) == 2 and packed[1] == 1 and len(full) >= 2 and 2 * packed[0] == numel(full):
            return True
    return False


@dataclass(frozen=True)
class ShapeMismatch:
    """A key whose tensor has one shape in the checkpoint and another in the model (here, not
    in ``error_text``: diagnosing from files needs no text parser and skips its imports)."""

    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"key": self.key, "checkpoint_shape": list(self.checkpoint_shape),
                "model_shape": list(self.model_shape)}


@dataclass(frozen=True)
class Evidence:
    """One evidence structure for both inputs: an error text, or a checkpoint and a model.

    ``model_shapes``/``checkpoint_shapes`` hold shapes of the missing/unexpected keys when
    the files are at hand; ``matched`` counts keys that load fine (``None`` from text).
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[ShapeMismatch, ...] = ()
    class_name: str | None = None
    truncated: bool = False
    source: str = "text"
    matched: int | None = None
    model_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    checkpoint_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    checkpoint_path: str | None = None
    model_spec: str | None = None
    used_key: str | None = None
    load_code: str = ""  # from files: the lines that load the state_dict as ``sd``, its format's way
    whole_file: bool = False  # from files: the state_dict is a folder's member file, no entry of one
    lookups: tuple[str, ...] = ()
    report: bool = False
    parallel: bool = False  # the text names model (tensor) parallelism
    named_prefix: str | None = None  # a wrapper prefix named in prose (no key shown)
    cut_mismatches: tuple[str, ...] = ()  # keys of size mismatches whose shapes were cut
    cut_empty: tuple[str, ...] = ()  # those of them whose checkpoint tensor is torch.Size([0])
    # PyTorch <= 0.3 raised its missing-keys KeyError only after every checkpoint key had loaded:
    # no key of the file was unexpected and no shape differed.
    nothing_unexpected: bool = False
    # PyTorch said the unexpected running stats are InstanceNorm's from a file saved before 0.4
    legacy_norm_stats: bool = False
    told_head_sizes: tuple[int, int] | None = None  # (checkpoint, model) told in prose, no key
    unlisted_unused: bool = False  # transformers' "were not used" report, its key list not pasted
    unnamed_size: bool = False  # PyTorch 0.1/0.2: a tensor of another size, no key, no shapes
    # from files: (alias, key it loads through) of tied parameters the checkpoint leaves out
    tied: tuple[tuple[str, str], ...] = ()
    # from files: (checkpoint key, model key) of the fix plan's renames (proven on shapes)
    moves: tuple[tuple[str, str], ...] = ()

    @property
    def one_sided(self) -> bool:
        """Only one kind of key shows (or keys of unknown side): the other side may be cut."""
        return (not self.mismatched and not (self.missing and self.unexpected)) or bool(self.lookups)

    @property
    def is_empty(self) -> bool:
        """No missing, unexpected or mismatched key at all."""
        return not (self.missing or self.unexpected or self.mismatched)


def zero_count_keys(mismatched: Iterable[ShapeMismatch]) -> frozenset[str]:
    """Keys of layers built with a count of zero (``nn.Linear(2048, 0)``: ``[0, 2048]``): an empty
    weight that keeps the other side's other axes, and the tensors of the same layers (its
    ``[0]`` bias). A partitioned parameter (ZeRO-3, FSDP) is flattened to ``[0]`` whatever its rank."""
    mm = list(mismatched)
    layers = {m.key.rpartition(".")[0] for m in mm
              if len(m.model_shape) == len(m.checkpoint_shape) >= 2
              and 0 in m.model_shape + m.checkpoint_shape
              and sum(a != b for a, b in zip(m.model_shape, m.checkpoint_shape)) == 1}
    return frozenset(m.key for m in mm if m.key.rpartition(".")[0] in layers)


def transposed_output(m: ShapeMismatch, mismatched: Iterable[ShapeMismatch]) -> bool:
    """A weight of rank 3 or more differing on axis 1 alone, beside its layer's bias of the same
    two sizes: axis 1 holds the outputs (a transposed convolution stores ``[in, out, *kernel]``),
    a count like a head's rows, not the input features axis 1 holds elsewhere."""
    c, s = m.checkpoint_shape, m.model_shape
    if len(c) != len(s) or len(s) < 3 or not m.key.endswith("weight"):
        return False
    if [i for i, (a, b) in enumerate(zip(c, s)) if a != b] != [1]:
        return False
    bias = m.key[: -len("weight")] + "bias"
    return any(b.key == bias and b.checkpoint_shape == (c[1],) and b.model_shape == (s[1],)
               for b in mismatched)


@dataclass(frozen=True)
class Finding:
    """A recognised cause before it is put into words: label, confidence, facts."""

    label: str
    confidence: float
    explains: frozenset[str] = frozenset()
    facts: Mapping[str, Any] = field(default_factory=dict)


