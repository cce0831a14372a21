"""Rendering results as text: tables (tabulate), JSON and markdown. No I/O here."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

TABLE_FORMATS = {"table": "simple", "markdown": "github"}


def to_json(data: Any) -> str:
    """Stable JSON: sorted keys, non-finite floats as strings, one list item per line.

    Lists of records (tensors, rows) put each record on one line: as readable as full
    indentation, and it keeps the C encoder, which ``indent`` would turn off (20,000 tensors
    encode in a tenth of the time).
    """
    try:
        return _encode(data, "")
    except ValueError:  # NaN or Inf somewhere: JSON has no token for them
        return _encode(_json_safe(data), "")


class EncodedRecords(list):  # type: ignore[type-arg]
    """Records already encoded as compact JSON text, one per line in ``to_json``'s output."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


_COMPACT = json.JSONEncoder(sort_keys=True, ensure_ascii=False, allow_nan=False)
try:  # one C encoder for every record: JSONEncoder.encode builds a new one per call
    from json.encoder import c_make_encoder as _c_make_encoder, encode_basestring as _quote
except ImportError:  # an interpreter without the C accelerator
    _c_make_encoder = None
_RECORD = (_c_make_encoder(None, _COMPACT.default, _quote, None, ": ", ", ", True, False, False)
           if _c_make_encoder is not None else None)


def _compact(value: Any) -> str:
    if _RECORD is not None and type(value) is dict:
        return "".join(_RECORD(value, 0))
    return _COMPACT.encode(value)


def _encode(value: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, EncodedRecords):
        return "[\n" + ",\n".join(inner + r for r in value) + "\n" + indent + "]" if value else "[]"
    if isinstance(value, dict) and value:
        items = sorted((str(k), v) for k, v in value.items())
        body = ",\n".join(f"{inner}{_compact(k)}: {_encode(v, inner)}" for k, v in items)
        return "{\n" + body + "\n" + indent + "}"
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, (dict, list)) for v in value):
        body = ",\n".join(inner + _compact(v) for v in value)
        return "[\n" + body + "\n" + indent + "]"
    return _compact(value)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], fmt: str = "table", *,
          keep_indent: bool = False) -> str:
    """A table in the style of ``fmt`` (``table`` or ``markdown``); ``keep_indent`` keeps the
    leading spaces of cells (for trees)."""
    if not rows:
        return ""
    # a column with nothing in any row (a repeat count where nothing repeats) says nothing
    from tabulate import tabulate  # 20 ms of imports that --format json never needs

    keep = [i for i in range(len(headers)) if any(str(r[i]) != "" for r in rows)]
    rows = [[r[i] for i in keep] for r in rows]
    headers = [headers[i] for i in keep]
    return tabulate(rows, headers=list(headers), tablefmt=TABLE_FORMATS.get(fmt, "simple"),
                    disable_numparse=True, preserve_whitespace=keep_indent)


def shape_text(shape: Sequence[int]) -> str:
    """``(768, 768)`` -> ``[768, 768]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def heading(text: str, fmt: str) -> str:
    """A section heading: markdown ``##`` or a plain line."""
    return f"## {text}" if fmt == "markdown" else text
