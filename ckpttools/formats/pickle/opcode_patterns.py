"""Pieces of regular expressions that read pickle opcodes at their true widths.

``torch.save`` writes protocol 2, and its tensor records repeat one form. ``records`` (one record),
``record_runs`` (a run of them) and ``plain_state`` (the dict around them) match that form with
these pieces: each alternative consumes exactly one opcode and its argument, so a match is the
pickle's own reading of those bytes.
"""

from __future__ import annotations

MEMO_PUT = rb"(q[\s\S]|r[\s\S]{4})"  # BINPUT or LONG_BINPUT, captured
LONG_PUT = rb"r([\s\S]{4})"  # LONG_BINPUT, its index captured
MEMO_GET = rb"(h[\s\S]|j[\s\S]{4})"  # BINGET or LONG_BINGET, captured
INT_OP = rb"(?:K[\s\S]|M[\s\S]{2}|J[\s\S]{4})"  # BININT1, BININT2 or BININT
INT_VALUE = rb"(" + INT_OP[3:]  # the same, captured
# a non-empty tuple of ints, captured: TUPLE1-3, or MARK ints TUPLE (at most 64: a tuple of over
# 1,000 items is one whose keys the opcode loop counts)
INT_TUPLE = (rb"(" + INT_OP + rb"\x85|" + INT_OP + rb"{2}\x86|" + INT_OP + rb"{3}\x87|\((?:"
             + INT_OP + rb"){0,64}t)")
# a shape or stride: EMPTY_TUPLE (never memoized), or a tuple of ints and its memo put
SHAPE = rb"(?:(\))|" + INT_TUPLE + MEMO_PUT + rb")"
