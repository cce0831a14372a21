"""What pasting does to an error text, undone before it is parsed.

CRLF line ends, typographic quotes, JSON or ``repr()`` escapes (one layer per log that held the
message), a terminal's hard wrap, colours, and the prefix a log or a quote puts on every line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'",
                         "\u2013": "-", "\u2026": "..."})
# Line prefixes that wrap pasted text: markdown quotes, torchrun rank tags.
_LINE_PREFIX = re.compile(r"^(?:\s*>\s?|\s*\[(?:rank|default)\d+\]:\s?)+", re.M)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "u001b": "\x1b"}
# Where a log record's prefix ends: logging's and loguru's " - ", a " | " column, a "] " tag, a
# run of blanks (pytest's "E       ").
_PREFIX_END = re.compile(r" - | \| |\] |\s{2,}")


def normalize_text(text: str) -> str:
    """Undo what pasting does to an error: CRLF, typographic quotes, a terminal's wrap, JSON
    escapes, colours, quote and log prefixes on every line."""
    text = _unwrap_terminal(text.replace("\r\n", "\n").replace("\r", "\n").translate(_QUOTES))
    # repr() of a KeyError escapes the single quotes of the set of keys PyTorch <= 0.3 printed
    if re.search(r"KeyError:\s*'missing keys in state_dict", text):
        text = text.replace("\\'", "'")
    text = _json_strings(text)
    # A message escaped once per layer it went through (a JSON log record holding a repr(), a
    # JSON string inside JSON): undo one layer at a time while escapes are left.
    for _ in range(4):
        unescaped = _unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # terminal colours (transformers, detectron2)
    return _strip_record_prefix(_LINE_PREFIX.sub("", text))


def _json_strings(text: str) -> str:
    """A JSON document, or each JSON line of a JSON-lines log, replaced by its string values,
    decoded again where a value is itself JSON (a record stored as a string in a run summary)."""
    whole = _record(text)
    if whole is not None:
        return whole
    return "\n".join(_record(line) or line for line in text.split("\n"))


def _record(text: str) -> str | None:
    """A JSON object's string values, one a line; ``None`` when ``text`` is no JSON object (a
    bare list stays: it may be a key list)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return "\n".join(_leaves(value)) if isinstance(value, dict) else None


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, str):
        inner = value.strip()
        yield _record(inner) or value if inner.endswith("}") else value


def _unescape(text: str) -> str:
    """One layer of JSON or repr() escaping undone, when the text is escaped; else ``text``."""
    escaped_lines = text.count("\\n") > max(2, text.count("\n"))
    if '\\"' in text or "\\n\\t" in text or re.search(r"\\n\s*\\t", text) or escaped_lines:
        # NOTE: notebook JSON (and repr()'d exceptions) escape quotes and newlines; a backslash
        # escaped by an outer layer ("\\\\n") becomes the inner layer's escape ("\\n").
        return re.sub(r'\\(\\|"|\'|n|t|u001b)', lambda m: _ESCAPES[m.group(1)], text)
    return text


def _unwrap_terminal(text: str) -> str:
    """Lines a terminal broke at its width joined again (keys and shapes cut mid-name).

    A hard wrap leaves lines of exactly the widest length, one at least broken inside a token or
    a sentence (no record-ending ``.:,;}`` or blank before the break; a word, or one blank and a
    word, after it: an indented line has more blanks). Then every such line continues on the
    next, unless the next starts the way the text's first line does (a log record's time and
    level, pytest's ``E``): that is a record of its own. Lines of one width that each end a record
    (fvcore's grouped keys) stay as they are.
    """
    lines = text.split("\n")
    width = max(map(len, lines))
    first = _shape(next((ln for ln in lines if ln.strip()), ""))
    joins = [len(ln) == width and not first.startswith(_shape(nxt[:10]))
             for ln, nxt in zip(lines, lines[1:])]
    inside = [re.match(r"[^\s.:,;}] ?\S", ln[-1] + nxt[:2])
              for ln, nxt, join in zip(lines, lines[1:], joins) if join]
    if width < 60 or not any(inside):
        return text
    return "".join(ln + ("" if join else "\n") for ln, join in zip(lines, joins + [True]))


def _shape(text: str) -> str:
    return re.sub(r"\d", "0", text)


def _strip_record_prefix(text: str) -> str:
    """The prefix a log puts on every line (time, level, logger: ``2026-01-05 12:00:01,234 - train
    - ERROR - ``, loguru's ``| ERROR | mod:fn:42 - ``, pytest's ``E       ``) removed.

    The prefix is what every non-blank line starts with, digits aside (times differ), up to the
    last place a record's prefix ends; it must hold more than blanks (fvcore indents its keys) and
    the lines must differ (a line repeated by ranks is no prefix of itself).
    """
    lines = [ln for ln in text.split("\n") if ln.strip()]
    shapes = [_shape(ln) for ln in lines]
    if len(set(shapes)) < 2:
        return text
    common = os.path.commonprefix(shapes)
    cut = max((m.end() for m in _PREFIX_END.finditer(common)), default=0)
    if not common[:cut].strip():
        return text
    return "\n".join(ln[cut:] if ln.strip() else ln for ln in text.split("\n"))
