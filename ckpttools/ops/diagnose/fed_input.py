"""An inner layer whose input channels differ by a few: it reads a concatenation with a counted part.

A network that concatenates a head's output (keypoint heatmaps, class maps) to its features feeds
the next layer ``features + count`` channels (HigherHRNet's ``transition_reg`` reads 480 + 14 or
480 + 17). A configured width is a multiple of 8 and scales; a first layer reads 1-4 image
channels. So an inner layer's input that differs by a few channels, with a size that is no
multiple of 8, is no input-channel setting (``in_chans``) and no width: a counted output that
feeds it changed, and the head that counts it is the other size mismatch of the text.
"""

from __future__ import annotations

from ckpttools.ops.diagnose.evidence import Evidence, Finding, ShapeMismatch

__all__ = ["concatenated_input", "fed_count_head"]

_FEATURES = 16  # fewer input channels than this are an image's or a signal's, not features


def concatenated_input(m: ShapeMismatch) -> bool:
    """``m`` is a weight whose input channels (axis 1) alone differ, by at most a quarter, at 16
    and more, with one side no multiple of 8: features concatenated with a count, when the layer
    does not read the network's input (the caller checks that).

    Args:
        m: a size mismatch.
    """
    c, s = m.checkpoint_shape, m.model_shape
    if len(c) != len(s) or len(s) < 2 or c[0] != s[0] or c[2:] != s[2:]:
        return False
    lo, d = min(c[1], s[1]), abs(c[1] - s[1])
    return lo >= _FEATURES and 0 < d <= lo // 4 and bool(c[1] % 8 or s[1] % 8)


def fed_count_head(ev: Evidence, fed: list[ShapeMismatch]) -> Finding | None:
    """The head whose count feeds ``fed``: a size mismatch whose shapes the paste cut.

    Args:
        ev: the evidence of an error text.
        fed: the mismatches that read a concatenation (:func:`concatenated_input`).

    Returns:
        A head candidate (below 0.8: its sizes are cut) over the cut keys and the fed layers,
        whose fix drops both; ``None`` without a cut size-mismatch line.
    """
    if not fed or not ev.cut_mismatches or ev.missing or ev.unexpected:
        return None
    m = fed[0]
    keys = list(ev.cut_mismatches) + [x.key for x in fed]
    return Finding("head_size_mismatch", 0.65, frozenset(keys),
                   {"keys": keys, "checkpoint_size": None, "model_size": None, "vocab": False,
                    "padded": False, "fed": [m.key, m.checkpoint_shape[1], m.model_shape[1]]})
