"""Shape relations that keep a size reading honest: a layer with one output, and what a width
read from too little cannot decide.

Found on the sixth held-out set (``tests/data/diagnose/frozen6``) after its before-tuning score
was recorded; each is a relation of shapes that holds for every model, tested on errors the
real ``load_state_dict`` raises (``tests/ops/diagnose/test_layer_relations.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ckpttools.ops.diagnose.evidence import Evidence, Finding, ShapeMismatch, numel

__all__ = ["lone_norm_code", "one_count_keys", "recurrent", "reshaped", "round_sizes",
           "width_from_norms_alone"]

# nn.LSTM/GRU/RNN (weight_ih_l0, bias_hh_l1_reverse) and their cells (weight_ih, bias_hh)
_RECURRENT = re.compile(r"(^|\.)(weight|bias)_(ih|hh)(_l\d+)?(_reverse)?$")


def one_count_keys(mismatched: Iterable[ShapeMismatch]) -> frozenset[str]:
    """Keys of layers built with one output (a single-class detector's ``[1, 320, 1, 1]``
    weight) and the tensors of the same layers (its ``[1]`` bias).

    A one-element tensor alone reads as a placeholder of a partitioned save (ZeRO-3 and FSDP
    flatten a parameter whatever its rank); beside a weight of the same layer with one row and
    the other side's other axes, it is that layer's real size.
    """
    mm = list(mismatched)
    layers = {m.key.rpartition(".")[0] for m in mm
              if len(m.model_shape) == len(m.checkpoint_shape) >= 2
              and m.checkpoint_shape[0] == 1 < m.model_shape[0]
              and m.checkpoint_shape[1:] == m.model_shape[1:]}
    return frozenset(m.key for m in mm if m.key.rpartition(".")[0] in layers)


def reshaped(mismatched: Iterable[ShapeMismatch]) -> list[ShapeMismatch]:
    """Tensors holding the same elements in another rank (a 1x1 convolution's ``[320, 320, 1, 1]``
    where the model has a Linear's ``[320, 320]``): a layer of another kind at the same path."""
    return [m for m in mismatched if len(m.checkpoint_shape) != len(m.model_shape)
            and numel(m.checkpoint_shape) == numel(m.model_shape) > 1]


def recurrent(key: str) -> bool:
    """A recurrent layer's weight or bias: its rows are the gates times the hidden size (4 x hidden
    for an LSTM, 3 x for a GRU), a width, never a count of classes."""
    return bool(_RECURRENT.search(key))


def width_from_norms_alone(mm: list[ShapeMismatch], ev: Evidence) -> bool:
    """A width read only from 1-D tensors (a norm's weight or bias) in a text with one or two
    size-mismatch lines: a model built wider changes the weights of the layers around the norm too,
    so a lone norm of another size is as much a layer moved by other code (a library version
    that builds the stage differently) or a list cut after its first line."""
    return (ev.source == "text" and bool(mm) and len(ev.mismatched) <= 2
            and all(len(m.model_shape) == len(m.checkpoint_shape) == 1 for m in mm))


def lone_norm_code(ev: Evidence) -> Finding | None:
    """The other reading of a width read from a lone norm line (:func:`width_from_norms_alone`):
    the code that builds the layer changed (a library version that merges another stage's
    features there). A candidate, listed below the width."""
    mm = list(ev.mismatched)
    if (ev.missing or ev.unexpected or not width_from_norms_alone(mm, ev)
            or any(min(numel(m.checkpoint_shape), numel(m.model_shape)) < 2 for m in mm)):
        return None
    return Finding("model_code_changed", 0.55, frozenset(m.key for m in mm),
                   {"missing": 0, "unexpected": 0, "examples_missing": [], "examples_unexpected": [],
                    "resized": [m.key for m in mm]})


_TABLE = re.compile(r"(^|[._])(\w*emb\w*|lut|tok_\w+)(\.\d+)?\.weight$")
# tables of positions, classes (DETR's class_embed is an output layer) and queries index no symbols
_NOT_SYMBOLS = re.compile(r"pos|class|cls|quer|label", re.IGNORECASE)


def lone_table_code(ev: Evidence) -> Finding | None:
    """One embedding table of another number of rows, nothing else shown to differ: the symbol or
    feature set it indexes (a vocabulary, an alphabet, atom types) is the checkpoint's data or the
    code's. Both readings are common (frozen12: three texts labelled by their threads as a code
    version's symbol set, three as the user's own); the code's is a candidate below the head."""
    mm = list(ev.mismatched)
    if (ev.missing or ev.unexpected or len(mm) != 1 or not _TABLE.search(mm[0].key)
            or _NOT_SYMBOLS.search(mm[0].key)):
        return None
    c, m = mm[0].checkpoint_shape, mm[0].model_shape
    if len(c) != 2 or len(m) != 2 or c[1] != m[1] or c[0] == m[0]:
        return None
    return Finding("model_code_changed", 0.5, frozenset({mm[0].key}),
                   {"missing": 0, "unexpected": 0, "examples_missing": [], "examples_unexpected": [],
                    "symbols": [mm[0].key, c[0], m[0]]})


def _power_of_two(n: int) -> bool:
    return n >= 8 and n & (n - 1) == 0


def round_sizes(sizes: tuple[int, int]) -> bool:
    """Both output sizes of a layer are powers of two (8 and 32): configured widths are, class
    and vocabulary counts rarely are both. Read only for a layer with no head name."""
    return all(_power_of_two(n) for n in sizes)
