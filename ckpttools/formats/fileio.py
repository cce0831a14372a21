"""One file API for local paths and URLs (``http(s)://``, ``hf://``, ``s3://``).

Readers call these instead of ``open`` and ``os.path`` so a URL reaches them unchanged. A local
path goes straight to the operating system (mmap and today's speed stay); a URL goes to
``formats/remote.py``, which is imported only then, so local start-up never loads fsspec.
"""

from __future__ import annotations

import os
import posixpath
from typing import IO, Any, BinaryIO

URL_SCHEMES = ("http://", "https://", "hf://", "s3://")


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL ckpttools reads through its remote layer."""
    return isinstance(path, str) and path.startswith(URL_SCHEMES)


def _remote() -> Any:
    from ckpttools.formats import remote

    return remote


def plan_value_reads(reader: Any, keys: Any) -> None:
    """Over a URL, tell the remote layer which tensors' bytes are read next, in this order
    (``inspect --stats``, audit's finite check): their ranges then arrive through a window of
    a few requests in flight instead of one request after another. Nothing for a local file.

    Args:
        reader: an open checkpoint (its ``raw_source(key)`` names each tensor's byte range).
        keys: the tensors, in the order they will be read.
    """
    if not is_url(getattr(reader, "path", None)):
        return
    by_url: dict[str, list[tuple[int, int]]] = {}
    for key in keys:
        src = reader.raw_source(key)
        if src is not None and is_url(src.path):
            by_url.setdefault(src.path, []).append((src.offset, src.offset + src.length))
    for url, ranges in by_url.items():
        _remote().plan_reads(url, ranges)


def open_binary(path: str) -> BinaryIO:
    """A seekable, read-only binary file: the local file, or a URL read by byte ranges."""
    if is_url(path):
        return _remote().open_url(path)
    return open(path, "rb")


def open_text(path: str) -> IO[str]:
    """A small text file (an index, a ``latest`` file) decoded as UTF-8."""
    if is_url(path):
        import io

        return io.TextIOWrapper(_remote().open_url(path), encoding="utf-8")
    return open(path, encoding="utf-8")


def local_path(path: str) -> str | None:
    """The local file behind ``path``: itself, or a ``hf://`` URL's copy in the Hugging Face
    cache (same revision); None for a URL that is read over the network."""
    if not is_url(path):
        return path
    return _remote().cached_path(path)


def is_remote_file(f: Any) -> bool:
    """Whether an open file reads over the network (no ``fileno``, no mmap)."""
    return bool(getattr(f, "remote", False))


def file_size(f: Any) -> int:
    """The size of an open file from ``open_binary``."""
    if is_remote_file(f):
        return int(f.size)
    return os.fstat(f.fileno()).st_size


def file_key(f: Any) -> tuple[Any, ...]:
    """What identifies an open file's content, to remember what was read from it."""
    if is_remote_file(f):
        return ("url", f.name, f.size)
    st = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def isdir(path: str) -> bool:
    return _remote().isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return _remote().isfile(path) if is_url(path) else os.path.isfile(path)


def exists(path: str) -> bool:
    return _remote().exists(path) if is_url(path) else os.path.exists(path)


def listdir(path: str) -> list[str]:
    return _remote().listdir(path) if is_url(path) else os.listdir(path)


def getsize(path: str) -> int:
    return _remote().getsize(path) if is_url(path) else os.path.getsize(path)


def join(path: str, *names: str) -> str:
    return posixpath.join(path, *names) if is_url(path) else os.path.join(path, *names)


def dirname(path: str) -> str:
    """The folder of ``path``; a URL's folder keeps its scheme (``os.path.abspath`` would not)."""
    return posixpath.dirname(path) if is_url(path) else os.path.dirname(os.path.abspath(path))


def normjoin(folder: str, name: str) -> str:
    """``name`` inside ``folder``, normalised (``a/./b`` -> ``a/b``)."""
    if is_url(folder):
        scheme, rest = folder.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, name))}"
    return os.path.normpath(os.path.join(folder, name))
