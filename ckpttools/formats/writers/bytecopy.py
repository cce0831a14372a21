"""Moving tensor bytes between files without holding a checkpoint in memory.

Bytes go by ``os.copy_file_range`` (a kernel copy, never in this process's memory); when a
CRC is needed (zip records) a worker thread reads the same range into one reused buffer. Pages
of the source are never mapped, so the resident set stays at the buffer size whatever the file
size. Every chunk written is handed to the disk at once (``write_behind``), so the disk writes
while the copy goes on and the final fsync has little left to wait for.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.entries import RawSource
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats import fileio

try:  # ISA-L's CRC-32 (same polynomial and values as zlib's) runs 2-10x faster with PCLMUL
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover  # a platform without an isal wheel
    from zlib import crc32

if TYPE_CHECKING:
    import torch

CHUNK = 8 << 20
READ_CHUNK = 1 << 20  # CRC reads: a buffer that stays in the CPU cache between read and CRC
SMALL = 256 << 10
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait
Progress = Callable[[int], None]


def _no_progress(n: int) -> None:
    pass


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux; ``os`` does not wrap it), or None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):  # TypeError: CDLL(None) on Windows
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def write_behind(fd: int, n: int) -> None:
    """Start writing to disk the ``n`` bytes just written before ``fd``'s position, without
    waiting for them.

    ``cp`` + fsync leaves the whole file to the fsync; handing each chunk to the disk as it is
    written overlaps the disk with the copy. The pages stay in the page cache (clean), so
    verification still reads the output back from memory. A no-op where the call is missing
    (not Linux) or refused (not a regular file): the final fsync writes everything anyway.
    """
    fn = _sync_file_range()
    if fn is None or n <= 0:
        return
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:  # not seekable (a pipe): nothing to hand to a disk
        return
    fn(fd, end - n, n, SYNC_FILE_RANGE_WRITE)


@dataclass(frozen=True)
class TensorData:
    """One tensor to write: its stored name, dtype, shape and where its bytes come from.

    Exactly one of ``raw`` (a byte range of a file, copied without torch), ``pieces`` (byte
    ranges of several files, a tensor saved in chunks) and ``load`` (returns a CPU tensor of
    ``dtype``/``shape``; made contiguous by the writer) is used, in that order.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    raw: RawSource | None = None
    load: Callable[[], Any] | None = None
    crc: int | None = None  # the CRC-32 the source records for ``raw`` (a torch zip record)
    pieces: tuple[RawSource, ...] = ()  # else byte ranges that, end to end, are the tensor


class SourceFiles:
    """Open-file cache for the sources of raw byte ranges (one fd per path)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def copy_raw(files: SourceFiles, src: RawSource, out_fd: int, *, crc: bool = False,
             on_progress: Progress = _no_progress) -> int:
    """Append ``src``'s bytes to ``out_fd`` (at its current position).

    Returns:
        The CRC-32 of the bytes when ``crc`` is true, else 0.

    Raises:
        CorruptCheckpointError: the source file ends before the range does.
    """
    if fileio.is_url(src.path):
        return _copy_url(src, out_fd, on_progress)
    in_fd = files.fd(src.path)
    offset, left, value = src.offset, src.length, 0
    buf = bytearray(min(CHUNK, max(left, 1))) if crc else None
    while left > 0:
        n = min(CHUNK, left)
        if buf is None:
            got = os.copy_file_range(in_fd, out_fd, n, offset)
        else:
            view = memoryview(buf)[:n]
            got = os.preadv(in_fd, [view], offset)
            value = crc32(view[:got], value)
            write_all(out_fd, view[:got])
        if got <= 0:
            raise CorruptCheckpointError(f"{src.path}: file ends inside a tensor's data "
                                         f"(offset {offset}); the file is truncated")
        write_behind(out_fd, got)
        offset += got
        left -= got
        on_progress(got)
    return value


def plan_url_reads(tensors: Sequence[TensorData]) -> None:
    """Tell each URL the byte ranges ``tensors`` will be copied from, in this order: its
    read-ahead then follows the writer (a view or tied weight read out of file order does
    not restart it)."""
    by_url: dict[str, list[tuple[int, int]]] = {}
    for t in tensors:
        for src in ((t.raw,) if t.raw is not None else t.pieces):
            if fileio.is_url(src.path):
                by_url.setdefault(src.path, []).append((src.offset, src.offset + src.length))
    if by_url:
        from ckpttools.formats import remote

        for url, ranges in by_url.items():
            remote.plan_reads(url, ranges)


def url_chunks(src: RawSource) -> Iterator[bytes | memoryview]:
    """A URL's byte range in pieces, the next ranges of the file already in flight (reads in
    file order, as convert makes them, never wait for a request each)."""
    from ckpttools.formats import remote

    yield from remote.read_sequential(src.path, src.offset, src.offset + src.length)


def _copy_url(src: RawSource, out_fd: int, on_progress: Progress) -> int:
    """``copy_raw`` from a URL: the bytes go from the network to ``out_fd`` in one pass, and
    their CRC-32 always comes along (verification then needs no second download)."""
    value = 0
    for chunk in url_chunks(src):
        value = crc32(chunk, value)
        write_all(out_fd, memoryview(chunk))
        write_behind(out_fd, len(chunk))
        on_progress(len(chunk))
    return value


def write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` at ``fd``'s position (``os.write`` may write less)."""
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _crc_of_range(fd: int, src: RawSource) -> int:
    """CRC-32 of a byte range, read through one reused buffer (runs in a worker thread:
    ``os.preadv`` and ``zlib.crc32`` release the GIL on large buffers)."""
    buf = bytearray(min(READ_CHUNK, max(src.length, 1)))
    offset, left, value = src.offset, src.length, 0
    while left > 0:
        view = memoryview(buf)[:min(READ_CHUNK, left)]
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            break  # the copy in the calling thread reports the truncation
        value = crc32(view[:got], value)
        offset += got
        left -= got
    return value


def copy_raw_crc(files: SourceFiles, src: RawSource, out_fd: int, pool: Executor, *,
                 on_progress: Progress = _no_progress) -> int:
    """Append ``src``'s bytes to ``out_fd`` by kernel copy and return their CRC-32.

    The CRC is computed on ``pool`` (one worker thread) reading the same range, from the page
    cache the copy fills, so the two overlap and nothing larger than one chunk is held in memory.

    Raises:
        CorruptCheckpointError: the source file ends before the range does.
    """
    if src.length <= SMALL or fileio.is_url(src.path):  # a URL's copy computes it on the way
        return copy_raw(files, src, out_fd, crc=True, on_progress=on_progress)
    crc = pool.submit(_crc_of_range, files.fd(src.path), src)
    try:
        copy_raw(files, src, out_fd, on_progress=on_progress)
    finally:
        value = crc.result()
    return value


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (keep ``t`` alive while using it)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * n).from_address(t.data_ptr())).cast("B")


def write_tensor(t: torch.Tensor, out_fd: int, *, crc: bool = False,
                 on_progress: Progress = _no_progress) -> int:
    """Append a tensor's bytes (made contiguous) to ``out_fd``; returns the CRC-32 if asked."""
    t = t.detach().cpu().contiguous()
    view, value = tensor_bytes(t), 0
    for start in range(0, len(view), CHUNK):
        part = view[start:start + CHUNK]
        if crc:
            value = crc32(part, value)
        write_all(out_fd, part)
        write_behind(out_fd, len(part))
        on_progress(len(part))
    return value


def copy_pieces(files: SourceFiles, pieces: tuple[RawSource, ...], out_fd: int, *,
                crc: bool = True, on_progress: Progress = _no_progress) -> int:
    """Append the byte ranges ``pieces`` one after another (a tensor assembled in place from
    its chunks): by kernel copy, or through one reused buffer when their CRC-32 is asked for.

    Returns:
        The CRC-32 of all their bytes when ``crc`` is true, else 0.

    Raises:
        CorruptCheckpointError: a source file ends before its range does.
    """
    if not crc:
        for piece in pieces:
            copy_raw(files, piece, out_fd, on_progress=on_progress)
        return 0
    value = 0
    buf = bytearray(min(CHUNK, max((p.length for p in pieces), default=1) or 1))
    for piece in pieces:
        if fileio.is_url(piece.path):
            for chunk in url_chunks(piece):
                value = crc32(chunk, value)
                write_all(out_fd, memoryview(chunk))
                on_progress(len(chunk))
            continue
        offset, left = piece.offset, piece.length
        while left > 0:
            view = memoryview(buf)[:min(CHUNK, left)]
            got = os.preadv(files.fd(piece.path), [view], offset)
            if got <= 0:
                raise CorruptCheckpointError(f"{piece.path}: file ends inside a tensor's data "
                                             f"(offset {offset}); the file is truncated")
            value = crc32(view[:got], value)
            write_all(out_fd, view[:got])
            write_behind(out_fd, got)
            offset += got
            left -= got
            on_progress(got)
    return value


def write_data(files: SourceFiles, data: TensorData, out_fd: int, *, crc: bool = False,
               on_progress: Progress = _no_progress) -> int:
    """Append one tensor's bytes from its raw range, its pieces or its loader."""
    if data.raw is not None:
        return copy_raw(files, data.raw, out_fd, crc=crc, on_progress=on_progress)
    if data.pieces:
        return copy_pieces(files, data.pieces, out_fd, crc=crc, on_progress=on_progress)
    if data.load is None:
        raise ValueError(f"{data.name}: no source for the tensor's bytes")
    return write_tensor(data.load(), out_fd, crc=crc, on_progress=on_progress)


def write_data_crc(files: SourceFiles, data: TensorData, out_fd: int, pool: Executor, *,
                   on_progress: Progress = _no_progress) -> int:
    """Append one tensor's bytes and return their CRC-32: the source's recorded CRC with a
    plain kernel copy when it has one, a kernel copy with the CRC read on ``pool`` from the page
    cache for another raw range, else computed on the tensor as written."""
    if data.raw is not None and data.crc is not None:
        copy_raw(files, data.raw, out_fd, on_progress=on_progress)
        return data.crc
    if data.raw is not None:
        return copy_raw_crc(files, data.raw, out_fd, pool, on_progress=on_progress)
    if data.pieces:
        return copy_pieces(files, data.pieces, out_fd, on_progress=on_progress)
    if data.load is None:
        raise ValueError(f"{data.name}: no source for the tensor's bytes")
    return write_tensor(data.load(), out_fd, crc=True, on_progress=on_progress)


def crc_of_range(files: SourceFiles, src: RawSource) -> int:
    """CRC-32 of a byte range, read in chunks into one reused buffer (nothing mapped).

    Raises:
        CorruptCheckpointError: the file ends before the range does.
    """
    if fileio.is_url(src.path):
        value = 0
        for chunk in url_chunks(src):
            value = crc32(chunk, value)
        return value
    fd = files.fd(src.path)
    if os.fstat(fd).st_size < src.offset + src.length:
        raise CorruptCheckpointError(f"{src.path}: file ends inside a tensor's data; "
                                     "the file is truncated")
    return _crc_of_range(fd, src)


def ranges_equal(files: SourceFiles, a: RawSource, b: RawSource) -> bool:
    """Whether two byte ranges hold the same bytes (read in chunks into two reused buffers,
    nothing mapped: fresh buffers per chunk would page-fault their way through every byte)."""
    if a.length != b.length:
        return False
    if fileio.is_url(a.path) or fileio.is_url(b.path):
        return crc_of_range(files, a) == crc_of_range(files, b)
    fa, fb = files.fd(a.path), files.fd(b.path)
    size = min(CHUNK, max(a.length, 1))
    bufs = (bytearray(size), bytearray(size))
    done = 0
    while done < a.length:
        n = min(size, a.length - done)
        if n < size:  # the last, short chunk: compare equal-length buffers
            bufs = (bytearray(n), bytearray(n))
        got_a = os.preadv(fa, [bufs[0]], a.offset + done)
        got_b = os.preadv(fb, [bufs[1]], b.offset + done)
        if got_a != n or got_b != n or bufs[0] != bufs[1]:
            return False
        done += n
    return True


def read_into(files: SourceFiles, src: RawSource, dest: memoryview) -> None:
    """Read all of ``src`` into ``dest`` (``len(dest) == src.length``).

    Raises:
        CorruptCheckpointError: the source file ends before the range does.
    """
    if fileio.is_url(src.path):
        at = 0
        for chunk in url_chunks(src):
            dest[at:at + len(chunk)] = chunk
            at += len(chunk)
        return
    done = 0
    while done < src.length:
        got = os.preadv(files.fd(src.path), [dest[done:done + CHUNK]], src.offset + done)
        if got <= 0:
            raise CorruptCheckpointError(f"{src.path}: file ends inside a tensor's data; "
                                         "the file is truncated")
        done += got
