"""Recognising checkpoint formats from their bytes (an extension is never trusted), without a reader."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ckpttools.errors import (CheckpointNotFoundError, CkptError, CorruptCheckpointError, UnreadableCheckpointError,
                              UnsupportedError)
from ckpttools.formats import fileio

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# records torch.save writes: <folder>/data.pkl (or any pickle), <folder>/data/<n>, version, byteorder
_TORCH_RECORD = re.compile(r".*\.pkl$|[^/]*/(data/\d+|version|\.data/version|byteorder)$")
# torch.serialization writes this number, pickled with protocol 2, at the start of a legacy file.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def read_head(path: str, n: int = 64) -> bytes:
    with fileio.open_binary(path) as f:
        return f.read(n)


def zip_names(path: str) -> list[str]:
    from ckpttools.formats import zip_records  # with zipfile: imported for zip files only

    try:
        with fileio.open_binary(path) as f:
            return list(zip_records.cached_directory(f))
    except (zip_records.ZipError, OSError, ValueError):
        return []


def is_torch_zip(path: str) -> bool:
    if fileio.isdir(path) or not read_head(path, 4) in ZIP_MAGIC:
        return False
    names = zip_names(path)
    # an unreadable zip that starts like one is still reported as a (corrupt) torch zip, and so
    # is one with torch.save's records but no pickle: the reader says what is missing
    return not names or any(_TORCH_RECORD.match(n) for n in names) and not is_torchscript(names)


def is_torchscript(names: list[str]) -> bool:
    joined = "\n".join(names)  # neither text in any name: one search, not 20,000 calls
    if "constants.pkl" not in joined and "/code/" not in joined:
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


def is_legacy_magic(data: Any) -> bool:
    """Whether ``data`` starts with torch's legacy magic number, pickled with any protocol (0-5),
    read from the opcodes as CPython's unpickler reads them (nothing is unpickled)."""
    from ckpttools.formats.pickle.genops import single_integer  # for pickles only

    return single_integer(data) == LEGACY_MAGIC_NUMBER


def is_legacy(path: str) -> bool:
    """A legacy torch file starts with its magic number pickled with the save's protocol
    (any of 0-5; torch.load reads them all)."""
    if fileio.isdir(path):
        return False
    head = read_head(path, 64)
    return head.startswith(LEGACY_MAGIC) or is_legacy_magic(head)


def is_safetensors(path: str) -> bool:
    if fileio.isdir(path):
        return False
    head = read_head(path, 9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    # a header longer than the file is still safetensors, and corrupt: the reader says so
    return head[8:9] == b"{" and n >= 2


def index_names(path: str) -> list[str]:
    if fileio.isdir(path):
        return sorted(n for n in fileio.listdir(path) if n.endswith(".index.json"))
    return [os.path.basename(path)] if path.endswith(".index.json") else []


def index_points_to(path: str, suffix: str) -> bool:
    for name in index_names(path):
        full = fileio.join(path, name) if fileio.isdir(path) else path
        check_regular(full)
        try:
            with fileio.open_text(full) as f:
                files = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            files = set()
        if files and all(str(f).endswith(suffix) for f in files):
            return True
        # a damaged index is still recognised by its name; the reader says what is wrong
        if not files and name.endswith(suffix + ".index.json"):
            return True
    return False


def is_safetensors_sharded(path: str) -> bool:
    return index_points_to(path, ".safetensors")


def is_torch_sharded(path: str) -> bool:
    return index_points_to(path, ".bin") or index_points_to(path, ".pt")


def is_dcp(path: str) -> bool:
    return fileio.isdir(path) and fileio.isfile(fileio.join(path, ".metadata"))


def foreign_kind(path: str) -> str | None:
    """Name a file that is a model or array file of another kind, not a PyTorch checkpoint."""
    head = read_head(path, 64)
    if head[:4] in ZIP_MAGIC:
        names = zip_names(path)
        if is_torchscript(names):
            return "a TorchScript archive (torch.jit.save); load it with torch.jit.load"
        if names and all(n.endswith(".npy") for n in names):
            return "a numpy .npz archive; load it with numpy.load"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array; load it with numpy.load"
    if head.startswith(b"GGUF"):
        return "a GGUF model file (llama.cpp); use the gguf package to read it"
    if os.path.basename(path) == "trainer_state.json" and head.lstrip()[:1] == b"{":
        return ("HF Trainer's step and log record; inspect the checkpoint-N folder that holds it "
                "for step, epoch and pieces")
    if head[:1] == b"\x08" and b"\x12" in head[1:4] and (b"pytorch" in head or b"onnx" in head
                                                        or path.endswith(".onnx")):
        return "an ONNX model; load it with onnx.load"
    return None


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_file_kind(path: str) -> str | None:
    """What ``path`` is when it is (or links to) a FIFO, socket or device: opening or reading
    one can block forever or never end, so every command refuses it before opening it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), None)


def check_regular(path: str) -> None:
    """Raise the one-line error for a FIFO, socket or device (before anything opens it)."""
    special = special_file_kind(path)
    if special:
        raise UnreadableCheckpointError(f"{path}: {special}, not a regular file; pass the "
                                        "checkpoint file itself")


def check_folder_members(path: str) -> None:
    """Refuse a folder holding a FIFO, socket or device among its entries: a loader of the
    folder (a sharded set, a trainer layout) would open it and block."""
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            check_regular(os.path.join(path, name))


def check_readable(path: str) -> None:
    if fileio.is_url(path):
        from ckpttools.formats import remote

        return remote.check_readable(path)
    check_regular(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such file or directory")
    if not (os.path.isfile(path) or os.path.isdir(path)):
        # a FIFO or device would block or never end; checkpoints need seekable files
        raise UnsupportedError(f"{path}: not a regular file or folder; save the checkpoint to a file")
    if not os.access(path, os.R_OK):
        raise UnreadableCheckpointError(f"{path}: permission denied; check the file's permissions")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CorruptCheckpointError(f"{path}: empty file; it holds no checkpoint")
    check_not_dcp_shard(path)


def check_not_dcp_shard(path: str) -> None:
    """Refuse one data file of a DCP folder given on its own: its bytes mean nothing without
    the folder's ``.metadata`` (which names every item, its shard and its byte range).

    Raises:
        UnsupportedError: ``path`` is a ``.distcp`` file; the message names its folder.
    """
    if not (path.endswith(".distcp") and os.path.isfile(path)):
        return
    folder = os.path.dirname(os.path.abspath(path))
    shown = os.path.dirname(path) or "."
    if os.path.isfile(os.path.join(folder, ".metadata")):
        raise UnsupportedError(f"{path}: one data file of the torch.distributed.checkpoint (DCP) "
                               f"folder {shown}, not a checkpoint on its own; pass the folder: {shown}")
    raise UnsupportedError(f"{path}: a torch.distributed.checkpoint (DCP) data file, and its folder "
                           f"{shown} has no .metadata; copy the whole DCP folder and pass it")


@contextmanager
def read_errors(path: str) -> Iterator[None]:
    """Turn an OS error while sniffing ``path`` into the one-line unreadable-checkpoint error."""
    try:
        yield
    except CkptError:
        raise  # already one line (a URL's 404, 401/403 or timeout)
    except PermissionError as e:
        raise UnreadableCheckpointError(f"{path}: permission denied; check the file's permissions") from e
    except OSError as e:
        if isinstance(e, CheckpointNotFoundError):
            raise
        raise UnreadableCheckpointError(f"{path}: cannot read: {os.strerror(e.errno or errno.EIO)}") from e
