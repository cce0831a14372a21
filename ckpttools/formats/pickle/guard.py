"""What the scan's walk of a pickle proves for the reader's guard, so that ``inspect`` (which
scans a checkpoint and then reads it) checks the pickle's opcodes once, not twice.

Before the C unpickler builds a tree, ``walk.scan_pickle`` checks that no length runs past the
data, no memo index is past it (the unpickler sizes its memo by the largest index) and no frame
is longer than the bytes after it: a malformed pickle must not make it allocate more than the
data holds. ``opwalk`` reads every opcode of the same bytes with the same widths and stops
with an error wherever a length runs past them; when it reaches STOP without one, it proves
the rest too if no memo index it stored and no frame end is past the pickle's end, and no PUT
has a text index (``scan_pickle`` reads those more strictly than the unpickler does). Anything
else is left to ``scan_pickle``. The proof is kept for the last pickle walked and holds its
bytes, so it applies only to those same bytes.
"""

from __future__ import annotations

from typing import Any

from ckpttools.formats.pickle.opstate import State

__all__ = ["note_walk", "proven_end", "proven_runs"]

MAX_KEPT = 64 << 20  # a larger pickle is not kept alive for the reader after its walk
_PROVEN: list[bytes] = []  # the bytes of the last pickle walked whose proof holds, if any
_RUNS: dict[int, tuple[Any, ...]] = {}  # its tensor record runs, by offset in those bytes


def note_walk(w: State, data: Any, start: int, end: int) -> None:
    """Keep what the walk of ``data[start:end]`` (up to and with its STOP) proves, if it does.

    Args:
        w: the walk's machine after its STOP.
        data: the bytes walked (bytes or a map: the pickle's bytes are kept, not the map).
        start: where the pickle starts in ``data``.
        end: just past its STOP.
    """
    _PROVEN.clear()
    _RUNS.clear()
    if end - start > MAX_KEPT or w.text_put or w.frames_end > end:
        return
    if w.memo and max(w.memo) > end - start:
        return
    _PROVEN.append(bytes(data[start:end]))
    if type(data) is bytes:  # the runs' matches read these bytes, which are kept anyway
        for pos, after, *rest in w.runs:
            _RUNS[pos - start] = (pos - start, after - start, *rest)


def proven_end(data: Any, offset: int) -> int | None:
    """Where the pickle at ``offset`` of ``data`` ends, when it is the last one a walk proved
    (what ``walk.scan_pickle(data, offset)`` returns for it); None when no proof applies."""
    if not _PROVEN:
        return None
    raw = _PROVEN[0]
    if data[offset:offset + len(raw)] != raw:
        return None
    return offset + len(raw)


def proven_runs(data: Any, offset: int) -> dict[int, tuple[Any, ...]]:
    """The tensor record runs the last proven walk took in the pickle at ``offset`` of
    ``data``, by offset from the pickle's start: ``(offset, end, first memo index, the five
    fetches, each record's match, keys)``; empty when no proof applies to these bytes. They
    are handed over once (their matches are freed with the caller's use)."""
    if not _RUNS or proven_end(data, offset) is None:
        return {}
    runs = dict(_RUNS)
    _RUNS.clear()
    return runs
