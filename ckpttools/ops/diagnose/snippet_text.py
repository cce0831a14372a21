"""Two helpers every fix writer uses to put names into printed code and commands."""

from __future__ import annotations

import re
import shlex


def shell_quoted(text: str) -> str:
    """``text`` as one shell word (a ``ckpttools remap`` argument)."""
    return shlex.quote(text)


def regex_literal(text: str) -> str:
    """``text`` as a regular expression matching it literally; underscores stay readable."""
    return re.escape(text).replace("\\_", "_")
