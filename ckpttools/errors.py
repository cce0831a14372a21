"""The exception hierarchy. Every error is one line for the user and exit code 2.

Messages follow ``"<path or key>: <what is wrong>; <what to do>"``: lowercase start, no
trailing period, about 120 characters at most.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


class CkptError(Exception):
    """Root of ckpttools' errors: the tool could not do its job (exit code 2)."""

    exit_code = EXIT_ERROR


class CheckpointNotFoundError(CkptError, FileNotFoundError):
    """The path does not exist."""


class UnknownFormatError(CkptError):
    """No known checkpoint format matches the bytes."""


class CorruptCheckpointError(CkptError):
    """The file claims a format but its bytes break it (truncated, bad header, bad offsets)."""


class UnsafeCheckpointError(CkptError):
    """Loading would execute code from the pickle; needs ``trust=True`` (CLI ``--trust``)."""


class UnsupportedError(CkptError):
    """The input is recognised, but the operation is not available for it."""


class SpecError(CkptError):
    """A model spec, recipe or rules file cannot be used."""
