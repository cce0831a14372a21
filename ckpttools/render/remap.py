"""Render a ``RemapResult``: what was written, and the old -> new key table."""

from __future__ import annotations

import re

from ckpttools.keypaths import compress_keys
from ckpttools.ops.diff.remap import RemapResult
from ckpttools.render import heading, table, to_json
from ckpttools.units import plural

MAX_ROWS = 60


def render_remap(result: RemapResult, fmt: str) -> str:
    """The report for ``fmt`` (``table``, ``markdown`` or ``json``)."""
    if fmt == "json":
        return to_json(result.to_dict())
    where = f" (state_dict under '{result.state_dict}')" if result.state_dict else ""
    action = "wrote" if result.written else "dry run, would write"
    lines = [heading(f"{action} {result.dst} ({result.output_format}){where}", fmt), "",
             f"{plural(len(result.renamed), 'key')} kept, {len(result.changed)} renamed, "
             f"{len(result.dropped)} dropped"]
    parts = ["\n".join(lines)]
    rows = []
    for old, new, n in compress_keys((o, _number_slot(nw, o)) for o, nw in result.changed):
        group = re.search(r"\{[^}]*\}", old) if n > 1 else None
        rows.append([old, new.replace("{N}", group.group() if group else "{N}", 1)
                     if n > 1 else new.replace("{N}", _first_number(old), 1), n if n > 1 else ""])
    if rows:
        if len(rows) > MAX_ROWS:
            rows = rows[:MAX_ROWS] + [[f"... {len(rows) - MAX_ROWS} more", "", ""]]
        parts.append(heading("Renamed", fmt) + "\n" + table(rows, ["old", "new", "n"], fmt))
    if result.dropped:
        dropped = [[k, n if n > 1 else ""]
                   for k, _, n in compress_keys((k, "") for k in result.dropped)]
        parts.append(heading("Dropped", fmt) + "\n" + table(dropped, ["key", "n"], fmt))
    return "\n\n".join(parts)


_NUMBER = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def _first_number(old: str) -> str:
    match = _NUMBER.search(old)
    return match.group() if match else ""


def _number_slot(new: str, old: str) -> str:
    """The new key with the old key's first layer number made a slot, so that every layer of
    a group shares one value and folds together."""
    number = _first_number(old)
    if not number:
        return new
    return re.sub(rf"(?<![\d]){number}(?![\d])", "{N}", new, count=1)
