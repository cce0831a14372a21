"""Atomic writing: a temporary file or folder beside the destination, fsync, then rename.

A crash or an error never leaves a partial destination, and the source is never modified.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ckpttools.errors import OutputError
from ckpttools.formats.writers.bytecopy import CHUNK, write_all, write_behind


def check_destination(src: str, dest: str, *, force: bool) -> None:
    """Refuse to write over the source, or over an existing destination without ``force``.

    Raises:
        CkptError: ``dest`` is ``src``, exists and ``force`` is false, or its folder is missing.
    """
    if os.path.exists(dest) and os.path.exists(src) and os.path.samefile(src, dest):
        raise OutputError(f"{dest}: destination is the source; write to another path")
    if os.path.exists(dest) and not force:
        raise OutputError(f"{dest}: already exists; pass --force to overwrite it")
    _check_parent(dest)


def _check_parent(dest: str) -> None:
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise OutputError(f"{dest}: folder {parent} does not exist; create it or write elsewhere")


def default_mode(directory: bool) -> int:
    """The mode ``open``/``mkdir`` would give a new file or folder under the user's umask
    (mkstemp and mkdtemp use 0600/0700, which would hide a shared checkpoint from the team)."""
    mask = os.umask(0)
    os.umask(mask)  # reading the umask means setting it; put it back at once
    return (0o777 if directory else 0o666) & ~mask


def fsync_path(path: str) -> None:
    """fsync a file, or every file in a folder and the folder itself."""
    if os.path.isdir(path):
        for name in os.listdir(path):
            fsync_path(os.path.join(path, name))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(dest: str, *, directory: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``dest``; on success fsync it and rename it to ``dest``.

    On any exception (or KeyboardInterrupt) the temporary path is removed and ``dest`` is left
    as it was. An existing ``dest`` is replaced only at the final rename.
    """
    _check_parent(dest)
    parent = os.path.dirname(os.path.abspath(dest))
    base = os.path.basename(dest)
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        os.close(fd)
    try:
        os.chmod(tmp, default_mode(directory))
        yield tmp
        fsync_path(tmp)
        if directory and os.path.isdir(dest):
            shutil.rmtree(dest)
        elif not directory and os.path.isdir(dest):
            raise OutputError(f"{dest}: is a folder; give a file path")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _WriteBehind(io.RawIOBase):
    """A file written front to back whose bytes are handed to the disk every ``CHUNK`` as they
    are written (``write_behind``), so the final fsync has little left to wait for."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        write_all(self._fd, view)
        self._pending += len(view)
        if self._pending >= CHUNK:
            write_behind(self._fd, self._pending)
            self._pending = 0
        return len(view)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            write_behind(self._fd, self._pending)
            os.close(self._fd)
        super().close()


@contextmanager
def write_behind_file(path: str) -> Iterator[io.BufferedWriter]:
    """Open ``path`` for a front-to-back write (``torch.save(obj, f)``) that goes to the disk
    while it is written; fsync it afterwards (``atomic_output`` does) for durability."""
    with io.BufferedWriter(_WriteBehind(path), buffer_size=1 << 20) as f:
        yield f
