"""Two settings read off a text: a table and an output layer whose counts one count does not give.

GST-Tacotron's symbol table (36 against 32 rows) beside its spectrogram output layer (1025 against
513 bins: ``n_fft // 2 + 1``) is a model built with two other settings, not a vocabulary of
another size (:mod:`ckpttools.ops.diagnose.count_pairs` says when pairs of sizes are one count's).
Two embedding tables of unrelated sizes stay two vocabularies (a head of another size), and so do
output layers that count what a table beside them counts (a source and a target dictionary); a
table beside a layer with a bias, of a size no table has, is the first candidate here, below the decision
threshold: the text does not say which settings the user changed.
"""

from __future__ import annotations

from ckpttools.ops.diagnose.count_pairs import one_count
from ckpttools.ops.diagnose.evidence import Evidence, Finding, ShapeMismatch
from ckpttools.ops.diagnose.shapes import counted

__all__ = ["SETTINGS_READING", "several_settings"]

SETTINGS_READING = 0.72  # above the head's candidate (count_pairs.UNRELATED_HEAD), below 0.8


def several_settings(ev: Evidence) -> Finding | None:
    """Sizes no single count change gives, on a table and an output layer: another configuration.

    Args:
        ev: the evidence of a text or of files.

    Returns:
        An ``architecture_variant`` finding of kind ``config`` naming the sizes, or ``None``.
    """
    sizes = counted(ev)
    if len(sizes) != len(ev.mismatched) or one_count(pair for _, pair in sizes):
        return None
    if not any(m.key.endswith("bias") for m, _ in sizes):
        return None  # tables alone: vocabularies
    if _outputs_over_tables(sizes):
        return None  # each output layer predicts over a table's count: vocabularies
    shown: dict[tuple[int, int], str] = {}
    for m, pair in sizes:
        shown.setdefault(pair, m.key)
    told = "; ".join(f"{k}: {c} in the checkpoint, {s} in the model"
                     for (c, s), k in list(shown.items())[:3])
    return Finding("architecture_variant", SETTINGS_READING, frozenset(m.key for m, _ in sizes),
                   {"kind": "config", "setting": f"sizes that no single count change gives ({told})",
                    "keys": [m.key for m, _ in sizes]})


def _outputs_over_tables(sizes: list[tuple[ShapeMismatch, tuple[int, int]]]) -> bool:
    """Every output layer (a layer whose bias differs too) counts what a table beside it counts.

    A translation model's source table (19025 against 19032 rows) beside its target table and
    output layer (104960 against 112832 each) is two dictionaries; a table beside an output layer
    of a count no table has (GST-Tacotron's 1025 spectrogram bins) is two settings.
    """
    outputs = {m.key.rpartition(".")[0] for m, _ in sizes if m.key.endswith("bias")}
    out_pairs = {pair for m, pair in sizes if m.key.rpartition(".")[0] in outputs}
    table_pairs = {pair for m, pair in sizes if m.key.rpartition(".")[0] not in outputs}
    return bool(table_pairs) and out_pairs <= table_pairs
