"""Public functions that combine two commands' operations (which never import each other)."""

from __future__ import annotations

import functools
from typing import Any

from ckpttools.ops.resume.verify import ResumeResult
from ckpttools.ops.resume.verify import verify_resume as _verify_resume


@functools.wraps(_verify_resume)
def verify_resume(*args: Any, **kwargs: Any) -> ResumeResult:
    # ``via`` sends the checkpoint through ``convert``; the resume operation takes the converter
    # as an argument so that the resume wing does not depend on the convert wing.
    if kwargs.get("via") is not None and kwargs.get("converter") is None:
        from ckpttools.ops.convert.conversion import convert_checkpoint

        kwargs["converter"] = convert_checkpoint
    return _verify_resume(*args, **kwargs)
