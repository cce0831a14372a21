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


class UnreadableCheckpointError(CkptError, PermissionError):
    """The path exists but cannot be read (permissions, I/O error)."""


class KeyNotFoundError(CkptError):
    """A ``--key`` or tensor key names nothing in the checkpoint (not a ``KeyError``: its
    ``str()`` would add quotes)."""


class UnknownFormatError(CkptError):
    """No known checkpoint format matches the bytes."""


class CorruptCheckpointError(CkptError):
    """The file claims a format but its bytes break it (truncated, bad header, bad offsets)."""


class UnsafeCheckpointError(CkptError):
    """Loading would execute code from the pickle; needs ``trust=True`` (CLI ``--trust``)."""


class UnsupportedError(CkptError):
    """The input is recognised, but the operation is not available for it."""


class OutputError(CkptError):
    """The destination cannot be written: it exists, it is the source, no space, no folder."""


class InvalidArgumentError(CkptError):
    """An option's value is malformed (a regular expression, a size, a dtype name)."""


class NoLoadErrorFound(CkptError):
    """The text given to ``diagnose`` holds no ``load_state_dict`` error."""


class SpecError(CkptError):
    """A model spec, recipe or rules file cannot be used."""
