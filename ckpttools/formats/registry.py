"""Format detection from content, and opening a checkpoint with the right reader."""

from __future__ import annotations

import os

from ckpttools.errors import UnknownFormatError
from ckpttools.formats import folder, safetensors_sharded
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.trainer import is_deepspeed, trainer_children
from ckpttools.formats.single_file import FILE_FORMATS, FormatSpec, unknown_format
from ckpttools.formats.sniff import check_folder_members, check_readable, is_dcp, is_safetensors_sharded, is_torch_sharded, read_errors


def _dcp(path: str, *, trust: bool = False) -> CheckpointReader:
    from ckpttools.formats.dcp_dir import DcpReader  # with the pickle walker: imported when used

    return DcpReader(path, trust=trust)


def _deepspeed(path: str, *, trust: bool = False) -> CheckpointReader:
    from ckpttools.formats.deepspeed_zero import DeepSpeedReader

    return DeepSpeedReader(path, trust=trust)


def _is_folder(path: str) -> bool:
    return os.path.isdir(path) and bool(folder.checkpoint_files(path))


# Tried in this order; the first match wins. Index files and DCP before the generic folder.
FORMATS: dict[Format, FormatSpec] = {
    Format.DCP: FormatSpec(is_dcp, _dcp),
    Format.DEEPSPEED: FormatSpec(is_deepspeed, _deepspeed),
    Format.SAFETENSORS_SHARDED: FormatSpec(
        is_safetensors_sharded, safetensors_sharded.ShardedSafetensorsReader
    ),
    Format.TORCH_SHARDED: FormatSpec(is_torch_sharded, safetensors_sharded.ShardedTorchReader),
    **FILE_FORMATS,
    Format.FOLDER: FormatSpec(_is_folder, folder.FolderReader),
}


def detect_format(path: str | os.PathLike[str]) -> Format:
    """Find a checkpoint's format from its bytes (the extension is never trusted).

    Raises:
        CheckpointNotFoundError: the path does not exist.
        UnsupportedError: the file is a model of another kind (TorchScript, ONNX, GGUF, numpy).
        UnknownFormatError: no format matches.
    """
    path = os.fspath(path)
    check_readable(path)
    check_folder_members(path)
    with read_errors(path):
        for fmt, spec in FORMATS.items():
            if spec.sniff(path):
                return fmt
        if os.path.isdir(path) and (children := trainer_children(path)):
            raise UnknownFormatError(f"{path}: a folder of trainer checkpoints ({', '.join(children)}); "
                                     f"give one of them, e.g. {os.path.join(path, children[-1])}")
        if os.path.isdir(path):
            raise UnknownFormatError(f"{path}: a directory with no checkpoint in it "
                                     "(looked for DCP .metadata, *.index.json and checkpoint files)")
        # a file can only be one of the single-file formats or a sharded set's index
        folders = (Format.FOLDER, Format.DCP, Format.DEEPSPEED)
        raise unknown_format(path, ", ".join(f.value for f in FORMATS if f not in folders))


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
