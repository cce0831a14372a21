"""Counts read off several size mismatches: one count per level, or counts no one setting explains.

Found on the tenth held-out set (``tests/data/diagnose/frozen10``) after its before-tuning scores
were recorded. Two of its four confident wrong answers read the pairs of sizes the wrong way:

- SSD's confidence layers (``conf.0``: 84 rows against 324, ``conf.1``: 126 against 486) read as
  another width at 0.85: each layer is one feature level's output, anchors x classes (4 x 21
  against 4 x 81, 6 x 21 against 6 x 81), so every pair of rows stands in one exact ratio while
  the sizes differ per level, and no layer's input changed (nothing reads those rows). A width
  changes the inputs of the layers after it; these are the network's outputs, one count;
- GST-Tacotron's symbol table (36 against 32 rows) beside its spectrogram output layer (1025
  against 513 bins) read as a vocabulary at 0.90: one vocabulary explains the table, not the
  output layer. Two counts that no single count change gives are two settings of the model
  (the rule that reads them: :mod:`ckpttools.ops.diagnose.settings_reading`).

Both relations hold for every model. One count change gives pairs of sizes related by the count
alone: the same pair, one exact ratio (rows per class), one difference (a background class on
both sides) or a multiple of a base pair plus a few rows (detectron2's 80 against 3 classes, 81
against 4 scores and 320 against 12 box offsets). Measured over every corpus (development,
generated whole and cut, transformers, frozen..frozen10): rows alone in one exact ratio over two
or more pairs hold for four real texts and no generated one: three heads of another size and a
proposal network beside 21 unexpected keys (frozen7's cascadetabnet74, whose answer does not
change: a proposal network's rows and other failing keys are read first); pairs no count explains
hold for two real texts (frozen5's dicttts3, two embedding tables, already a candidate, and
GST-Tacotron).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

from ckpttools.ops.diagnose.evidence import ShapeMismatch

__all__ = ["UNRELATED_HEAD", "one_count", "per_level_rows"]

UNRELATED_HEAD = 0.7  # a head of another size when its counts are unrelated: a candidate


def _rows_only(m: ShapeMismatch) -> bool:
    c, s = m.checkpoint_shape, m.model_shape
    return len(c) == len(s) >= 1 and c[0] != s[0] and c[1:] == s[1:] and min(c[0], s[0]) > 0


def per_level_rows(mm: Sequence[ShapeMismatch]) -> bool:
    """Every tensor differs in its rows alone, over two or more pairs of rows in one exact ratio.

    Parallel output layers (one per feature level) counting the same thing per position: their
    rows are ``k x count`` with k varying by level, so the sizes differ and the ratio does not.

    Args:
        mm: the size mismatches of a text.
    """
    if not mm or not all(_rows_only(m) for m in mm):
        return False
    pairs = {(m.checkpoint_shape[0], m.model_shape[0]) for m in mm}
    return len(pairs) >= 2 and len({Fraction(c, s) for c, s in pairs}) == 1


def one_count(pairs: Iterable[tuple[int, int]]) -> bool:
    """The pairs of sizes (checkpoint, model) are what one count changed gives.

    The same pair, one exact ratio, one difference, one side's size shared (two vocabularies into
    one), or multiples of the pair with the least difference plus at most as many rows as the
    multiple (a background class, a score per anchor).

    Args:
        pairs: the differing sizes of each tensor on its count axis.
    """
    pairs = sorted(set(pairs))
    if len(pairs) < 2:
        return True
    if any(len(set(values)) == 1 for values in (
            [c - s for c, s in pairs], [c for c, _ in pairs], [s for _, s in pairs])):
        return True
    if all(s for _, s in pairs) and len({Fraction(c, s) for c, s in pairs}) == 1:
        return True
    c0, s0 = min(pairs, key=lambda p: (abs(p[0] - p[1]), p[0]))
    d0 = c0 - s0
    for c, s in pairs:
        k, rest = divmod(c - s, d0)
        if rest or k < 1 or abs(c - k * c0) > k:
            return False
    return True
