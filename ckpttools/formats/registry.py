"""Format detection from content, and opening a checkpoint with the right reader."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ckpttools.errors import (
    CheckpointNotFoundError,
    UnreadableCheckpointError,
    CorruptCheckpointError,
    UnknownFormatError,
    UnsupportedError,
)
from ckpttools.formats import (
    dcp_dir,
    folder,
    safetensors_file,
    safetensors_sharded,
    torch_legacy,
    torch_zip,
    zip_records,
)
from ckpttools.formats.base import CheckpointReader, Format

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# records torch.save writes: <folder>/data.pkl (or any pickle), <folder>/data/<n>, version, byteorder
_TORCH_RECORD = re.compile(r".*\.pkl$|[^/]*/(data/\d+|version|\.data/version|byteorder)$")
# torch.serialization writes this number, pickled with protocol 2, at the start of a legacy file.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


@dataclass(frozen=True)
class FormatSpec:
    """How to recognise a format and which reader opens it."""

    sniff: Callable[[str], bool]
    reader: type[CheckpointReader]


def _head(path: str, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _zip_names(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            return list(zip_records.read_directory(f, zip_records.file_size(f)))
    except (zip_records.ZipError, OSError, ValueError):
        return []


def _is_torch_zip(path: str) -> bool:
    if os.path.isdir(path) or not _head(path, 4) in ZIP_MAGIC:
        return False
    names = _zip_names(path)
    # an unreadable zip that starts like one is still reported as a (corrupt) torch zip, and so
    # is one with torch.save's records but no pickle: the reader says what is missing
    return not names or any(_TORCH_RECORD.match(n) for n in names) and not _is_torchscript(names)


def _is_torchscript(names: list[str]) -> bool:
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _is_legacy(path: str) -> bool:
    return not os.path.isdir(path) and _head(path, len(LEGACY_MAGIC)) == LEGACY_MAGIC


def _is_safetensors(path: str) -> bool:
    if os.path.isdir(path):
        return False
    head = _head(path, 9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    # a header longer than the file is still safetensors, and corrupt: the reader says so
    return head[8:9] == b"{" and n >= 2


def _index_names(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(n for n in os.listdir(path) if n.endswith(".index.json"))
    return [os.path.basename(path)] if path.endswith(".index.json") else []


def _index_points_to(path: str, suffix: str) -> bool:
    for name in _index_names(path):
        full = os.path.join(path, name) if os.path.isdir(path) else path
        try:
            with open(full, encoding="utf-8") as f:
                files = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            files = set()
        if files and all(str(f).endswith(suffix) for f in files):
            return True
        # a damaged index is still recognised by its name; the reader says what is wrong
        if not files and name.endswith(suffix + ".index.json"):
            return True
    return False


def _is_safetensors_sharded(path: str) -> bool:
    return _index_points_to(path, ".safetensors")


def _is_torch_sharded(path: str) -> bool:
    return _index_points_to(path, ".bin") or _index_points_to(path, ".pt")


def _is_dcp(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))


def _is_folder(path: str) -> bool:
    return os.path.isdir(path) and bool(folder.checkpoint_files(path))


# Tried in this order; the first match wins. Index files and DCP before the generic folder.
FORMATS: dict[Format, FormatSpec] = {
    Format.DCP: FormatSpec(_is_dcp, dcp_dir.DcpReader),
    Format.SAFETENSORS_SHARDED: FormatSpec(
        _is_safetensors_sharded, safetensors_sharded.ShardedSafetensorsReader
    ),
    Format.TORCH_SHARDED: FormatSpec(_is_torch_sharded, safetensors_sharded.ShardedTorchReader),
    Format.TORCH_ZIP: FormatSpec(_is_torch_zip, torch_zip.TorchZipReader),
    Format.TORCH_LEGACY: FormatSpec(_is_legacy, torch_legacy.TorchLegacyReader),
    Format.SAFETENSORS: FormatSpec(_is_safetensors, safetensors_file.SafetensorsReader),
    Format.FOLDER: FormatSpec(_is_folder, folder.FolderReader),
}


def _foreign_kind(path: str) -> str | None:
    """Name a file that is a model or array file of another kind, not a PyTorch checkpoint."""
    head = _head(path, 64)
    if head[:4] in ZIP_MAGIC:
        names = _zip_names(path)
        if _is_torchscript(names):
            return "a TorchScript archive (torch.jit.save); load it with torch.jit.load"
        if names and all(n.endswith(".npy") for n in names):
            return "a numpy .npz archive; load it with numpy.load"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array; load it with numpy.load"
    if head.startswith(b"GGUF"):
        return "a GGUF model file (llama.cpp); use the gguf package to read it"
    if head[:1] == b"\x08" and b"\x12" in head[1:4] and (b"pytorch" in head or b"onnx" in head
                                                        or path.endswith(".onnx")):
        return "an ONNX model; load it with onnx.load"
    return None


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise UnreadableCheckpointError(f"{path}: permission denied; check the file's permissions")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CorruptCheckpointError(f"{path}: empty file; it holds no checkpoint")


def detect_format(path: str | os.PathLike[str]) -> Format:
    """Find a checkpoint's format from its bytes (the extension is never trusted).

    Raises:
        CheckpointNotFoundError: the path does not exist.
        UnsupportedError: the file is a model of another kind (TorchScript, ONNX, GGUF, numpy).
        UnknownFormatError: no format matches.
    """
    path = os.fspath(path)
    _check_readable(path)
    try:
        for fmt, spec in FORMATS.items():
            if spec.sniff(path):
                return fmt
        foreign = None if os.path.isdir(path) else _foreign_kind(path)
    except PermissionError as e:
        raise UnreadableCheckpointError(f"{path}: permission denied; check the file's permissions") from e
    except OSError as e:
        raise UnreadableCheckpointError(f"{path}: cannot read: {os.strerror(e.errno or errno.EIO)}") from e
    if foreign:
        raise UnsupportedError(f"{path}: {foreign}, not a PyTorch checkpoint")
    if os.path.isdir(path):
        raise UnknownFormatError(f"{path}: a directory with no checkpoint in it "
                                 "(looked for DCP .metadata, *.index.json and checkpoint files)")
    tried = ", ".join(f.value for f in FORMATS if f is not Format.FOLDER)
    raise UnknownFormatError(f"{path}: not a checkpoint format ckpttools knows (tried {tried})")


def open_checkpoint(
    path: str | os.PathLike[str], *, trust: bool = False, format: Format | None = None
) -> CheckpointReader:
    """Open a checkpoint with the reader for its format.

    Args:
        path: a file or directory.
        trust: allow full unpickling (code execution) for files the user vouches for.
        format: skip detection and use this format.

    Returns:
        A reader; use it as a context manager.

    Raises:
        CkptError: the path is missing, unreadable, of an unknown format or malformed.

    Example:
        >>> with open_checkpoint("model.pth") as ckpt:
        ...     print(len(ckpt.tensor_entries()))
    """
    fmt = format or detect_format(path)
    return FORMATS[fmt].reader(path, trust=trust)
