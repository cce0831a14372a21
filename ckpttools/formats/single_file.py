"""Single-file formats (torch zip, legacy torch, safetensors): which reader opens a file.

Folders, sharded sets and DCP directories open their member files through here; the registry
adds those formats on top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ckpttools.errors import UnknownFormatError, UnsupportedError
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.safetensors_file import SafetensorsReader
from ckpttools.formats.sniff import (
    check_readable,
    foreign_kind,
    is_legacy,
    is_safetensors,
    is_torch_zip,
    read_errors,
)


@dataclass(frozen=True)
class FormatSpec:
    """How to recognise a format and which reader opens it."""

    sniff: Callable[[str], bool]
    reader: Callable[..., CheckpointReader]  # ``reader(path, trust=...)``: a class or an opener


# The pickle readers (and the walker behind them) are imported when a file needs them: a
# safetensors file is read without them (about 40 ms of imports).
def _torch_zip(path: str, *, trust: bool = False) -> CheckpointReader:
    from ckpttools.formats.torch_zip import TorchZipReader

    return TorchZipReader(path, trust=trust)


def _torch_legacy(path: str, *, trust: bool = False) -> CheckpointReader:
    from ckpttools.formats.torch_legacy import TorchLegacyReader

    return TorchLegacyReader(path, trust=trust)


# Tried in this order; the first match wins.
FILE_FORMATS: dict[Format, FormatSpec] = {
    Format.TORCH_ZIP: FormatSpec(is_torch_zip, _torch_zip),
    Format.TORCH_LEGACY: FormatSpec(is_legacy, _torch_legacy),
    Format.SAFETENSORS: FormatSpec(is_safetensors, SafetensorsReader),
}


def unknown_format(path: str, tried: str) -> Exception:
    """The error for a file no format matched: a model of another kind, or an unknown format."""
    foreign = foreign_kind(path)
    if foreign:
        return UnsupportedError(f"{path}: {foreign}, not a PyTorch checkpoint")
    return UnknownFormatError(f"{path}: not a checkpoint format ckpttools knows (tried {tried})")


def open_file(path: str, *, trust: bool = False) -> CheckpointReader:
    """Open one checkpoint file (a folder's member, a shard) with the reader for its format.

    Raises:
        CkptError: the file is missing, unreadable, of an unknown format or malformed.
    """
    check_readable(path)
    with read_errors(path):
        spec = next((s for s in FILE_FORMATS.values() if s.sniff(path)), None)
        if spec is None:
            raise unknown_format(path, ", ".join(f.value for f in FILE_FORMATS))
    return spec.reader(path, trust=trust)
