"""Sizes that the model code explains: a layer of another kind, or modules moved along a stack.

Found on the tenth held-out set (``tests/data/diagnose/frozen10``) after its before-tuning scores
were recorded. Two of its four confident wrong answers were another width (0.80, 0.85) where the
code had changed:

- mozilla TTS's ``embedding.weight``, ``[61, 256]`` in the checkpoint and ``[256, 1025]`` in the
  model: the checkpoint's feature size (256) sits on the model's first axis, and the two axes
  change by different factors. A width scales a weight's axes alike or keeps one; this is a
  table of 61 symbols where the code now builds a layer from 1025 inputs to 256, another kind
  of layer at the same path;
- MiDaS under a newer timm: each Swin V2 stage's ``downsample`` moved to the start of the next
  stage (``layers.0.downsample`` only in the file, ``layers.3.downsample`` only in the model),
  and the ``downsample`` of the stages between differs in size because each now sits one stage
  off. A size mismatch inside the modules that moved is the move's, not a width setting's.

A third relation was found on its misses once a wrapped shape (``[12\n8, 512]``) was read:
MockingBird's Tacotron, whose every layer reading the encoder's output gained the same 512 input
features (512 -> 1024, 768 -> 1280, 640 -> 1152, 1536 -> 2048), a speaker embedding concatenated by
newer code, read as another width at 0.80. Layers that read inputs of different sizes, each
widened by one and the same count with no layer writing it shown, read one part concatenated to
their inputs: the code that concatenates it or the setting of the part that makes it (MonSter's
feature transfer, 192 channels less from a smaller encoder) read the same, so the width is a
candidate beside the code.

The relations hold for every model. Measured over every corpus (development, generated whole and
cut, transformers, frozen..frozen10): the first holds for one text (mozillatts276), the second
for 65 generated texts whose code changed (decided, right), 10 cut ones (candidates, right) and
one real text (depthmap2mask60); no text of another cause holds either. The third holds for
three real texts: two whose code changed (kinpoly6, mockingbird253) and one variant (monster48).

Three more were found on frozen15/16: a kernel whose output and input channels trade places with
its kernel axes kept (a layer that maps the other way, or a transposed convolution where a
convolution was; a library's kernel layout moves the kernel axes too), recurrent cells on one side
and a recurrent layer on the other (PyTorch names their tensors ``weight_ih`` and
``weight_ih_l0``), and the biases alone of several layers of one role (the layers' bias flag).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from ckpttools.ops.diagnose.evidence import Evidence, Finding, ShapeMismatch
from ckpttools.ops.diagnose.structure import structure_pairs

__all__ = ["CODE_READING", "PART_WIDTH", "another_kind", "bias_of_swapped", "channels_swapped", "concatenated_part",
           "in_moved_modules", "layer_of_another_kind", "layers_bias_flag", "recurrent_kind", "same_part_added",
           "swapped_channels"]

CODE_READING = 0.6  # the code changed: first candidate; the width stays below it (the text cannot decide)
PART_WIDTH = 0.72  # a width read from a part concatenated to several inputs: first, below 0.8
_NUMBER = re.compile(r"(?<=\.)\d+(?=\.)")


def another_kind(m: ShapeMismatch) -> bool:
    """A matrix whose two axes change by different factors, one side's size on the other's other axis.

    Args:
        m: a size mismatch.
    """
    c, s = m.checkpoint_shape, m.model_shape
    if len(c) != 2 or len(s) != 2 or c[0] == s[0] or c[1] == s[1] or not all(c + s):
        return False
    return (c[1] == s[0] or c[0] == s[1]) and Fraction(c[0], s[0]) != Fraction(c[1], s[1])


def layer_of_another_kind(ev: Evidence) -> Finding | None:
    """One matrix of another kind at its path, nothing else failing: the model code changed."""
    if len(ev.mismatched) != 1 or ev.missing or ev.unexpected or not another_kind(ev.mismatched[0]):
        return None
    m = ev.mismatched[0]
    return Finding("model_code_changed", CODE_READING, frozenset({m.key}),
                   {"missing": 0, "unexpected": 0, "examples_missing": [], "examples_unexpected": [],
                    "kind_changed": [m.key, list(m.checkpoint_shape), list(m.model_shape)]})


def channels_swapped(m: ShapeMismatch) -> bool:
    """A kernel (3-D or more) whose output and input channels trade places, its kernel axes kept.

    ``[256, 768, 1, 1]`` in the file, ``[768, 256, 1, 1]`` in the model: the layer maps the other
    way now (768 -> 256 where it was 256 -> 768), or a transposed convolution (``[in, out, k, k]``)
    stands where a convolution was. A kernel layout of another library moves the kernel axes too
    (spconv's ``[out, k, k, k, in]``); one that keeps them and swaps the channels is another layer.

    Args:
        m: a size mismatch.
    """
    c, s = m.checkpoint_shape, m.model_shape
    return len(c) == len(s) >= 3 and c[0] != c[1] and (c[1], c[0], *c[2:]) == tuple(s)


def bias_of_swapped(ev: Evidence, m: ShapeMismatch) -> bool:
    """``m`` is the bias of a kernel whose channels swapped (its output size before and after).

    Args:
        ev: the evidence of a text.
        m: a size mismatch.
    """
    module = m.key.rpartition(".")[0]
    return len(m.checkpoint_shape) == len(m.model_shape) == 1 and any(
        k.key.rpartition(".")[0] == module and channels_swapped(k)
        and (k.checkpoint_shape[0], k.model_shape[0]) == (m.checkpoint_shape[0], m.model_shape[0])
        for k in ev.mismatched)


def swapped_channels(ev: Evidence) -> Finding | None:
    """Every size mismatch a kernel whose channels swapped, or the bias of one: the model code
    builds the layer otherwise."""
    kernels = [m for m in ev.mismatched if channels_swapped(m)]
    if not kernels or not all(m in kernels or bias_of_swapped(ev, m) for m in ev.mismatched):
        return None
    m = kernels[0]
    return Finding("model_code_changed", CODE_READING, frozenset(m.key for m in ev.mismatched),
                   {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
                    "examples_missing": list(ev.missing[:3]),
                    "examples_unexpected": list(ev.unexpected[:3]),
                    "channels_swapped": [m.key, list(m.checkpoint_shape), list(m.model_shape)]})


# nn.GRU/nn.LSTM/nn.RNN name their tensors per layer and direction (weight_ih_l0,
# bias_hh_l1_reverse); nn.GRUCell/nn.LSTMCell/nn.RNNCell have one layer (weight_ih).
_RNN_LAYER = re.compile(r"(^|\.)(weight|bias)_(ih|hh)_l\d+(_reverse)?$")
_RNN_CELL = re.compile(r"(^|\.)(weight|bias)_(ih|hh)$")
CELLS_READING = 0.72  # cells where a recurrent layer was: first, below 0.8 (the text shows no shapes)
_LAYER_KIND = "a recurrent layer (nn.GRU/nn.LSTM: weight_ih_l0)"
_CELL_KIND = "recurrent cells (nn.GRUCell/nn.LSTMCell: weight_ih)"


def recurrent_kind(ev: Evidence) -> Finding | None:
    """Every key one side lacks a recurrent layer's (``weight_ih_l0``), every key the other side
    lacks a cell's (``weight_ih``): the code builds the recurrence with the other module kind."""
    for layers, cells, model_side in ((ev.missing, ev.unexpected, _LAYER_KIND),
                                      (ev.unexpected, ev.missing, _CELL_KIND)):
        if (layers and cells and all(_RNN_LAYER.search(k) for k in layers)
                and all(_RNN_CELL.search(k) for k in cells)):
            file_side = _CELL_KIND if model_side == _LAYER_KIND else _LAYER_KIND
            return Finding("model_code_changed", CELLS_READING, frozenset(ev.missing + ev.unexpected),
                           {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
                            "examples_missing": list(ev.missing[:3]),
                            "examples_unexpected": list(ev.unexpected[:3]),
                            "recurrent_kind": [ev.missing[0], file_side, model_side]})
    return None


def layers_bias_flag(ev: Evidence) -> Finding | None:
    """One side lacks only the biases of several layers of one role (``stages.*.dwconv.bias``)
    whose weights loaded: the code builds those layers with (or without) a bias now, a flag of the
    layer (``bias=True``) rather than another model or another width."""
    for side, other in ((ev.missing, ev.unexpected), (ev.unexpected, ev.missing)):
        roles = {_NUMBER.sub("#", k) for k in side}
        if (len(side) >= 2 and all(k.endswith(".bias") for k in side) and len(roles) == 1
                and len(side) > len(other) and not any(k.endswith(".weight") and k[:-7] + ".bias"
                                                       in side for k in other)):
            return Finding("model_code_changed", CODE_READING, frozenset(side),
                           {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
                            "examples_missing": list(ev.missing[:3]),
                            "examples_unexpected": list(ev.unexpected[:3]),
                            "bias_flag": [side[0], "checkpoint" if side is ev.unexpected else "model",
                                          len(side)]})
    return None


def in_moved_modules(ev: Evidence, mm: Sequence[ShapeMismatch]) -> bool:
    """Every size mismatch sits in a module that moved along a numbered stack (its path, numbers aside,
    is the path of a key only the model has and one only the checkpoint has, paired as a move).

    Args:
        ev: the evidence of a text.
        mm: the size mismatches read as a width.
    """
    pairs = structure_pairs(ev.missing, ev.unexpected) if ev.missing and ev.unexpected else []
    moved = {_NUMBER.sub("#", k) for pair in pairs for k in pair}
    return bool(mm) and bool(moved) and all(_NUMBER.sub("#", m.key) in moved for m in mm)


def same_part_added(mm: Sequence[ShapeMismatch]) -> bool:
    """Two or more weights of different input sizes, each differing on its input axis alone, by
    one and the same count: one part concatenated to every input changed size.

    Args:
        mm: the size mismatches of a text.
    """
    if len(mm) < 2:
        return False
    for m in mm:
        c, s = m.checkpoint_shape, m.model_shape
        if len(c) != len(s) or len(s) < 2 or c[1] == s[1] or c[:1] + c[2:] != s[:1] + s[2:]:
            return False
    return (len({m.model_shape[1] - m.checkpoint_shape[1] for m in mm}) == 1
            and len({m.checkpoint_shape[1] for m in mm}) > 1)


def concatenated_part(ev: Evidence) -> Finding | None:
    """The code that concatenates a part to several layers' inputs changed: a candidate beside the
    width of the part (:func:`same_part_added`)."""
    if ev.missing or ev.unexpected or not same_part_added(ev.mismatched):
        return None
    m = ev.mismatched[0]
    return Finding("model_code_changed", CODE_READING, frozenset(x.key for x in ev.mismatched),
                   {"missing": 0, "unexpected": 0, "examples_missing": [], "examples_unexpected": [],
                    "features": [m.key, m.checkpoint_shape[1], m.model_shape[1]]})
