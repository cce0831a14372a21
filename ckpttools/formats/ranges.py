"""Tensors stored in pieces: the byte ranges whose concatenation is the whole tensor.

A tensor that training wrote in chunks (DCP from several ranks, ZeRO flat partitions) is, in
row-major order, a sequence of byte ranges of several files. Readers hand that sequence out
(``raw_pieces``) so writers copy each range into its place of the output by kernel copy, and
``load`` reads the ranges straight into one buffer: nothing holds a chunk beside the tensor.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

from ckpttools.entries import RawSource
from ckpttools.formats import fileio
from ckpttools.errors import CorruptCheckpointError

# beyond this many ranges (a tall tensor split along its last dimension) a tensor is loaded
MAX_PIECES = 1 << 16


def _contiguous(shape: Sequence[int]) -> list[int]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return strides[::-1]


def _tiles(size: tuple[int, ...], chunks: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    """Whether the chunks ``(offsets, sizes)`` cover ``size`` exactly: in bounds, no overlap."""
    if sum(math.prod(s) for _, s in chunks) != math.prod(size):
        return False
    for o, s in chunks:
        if len(o) != len(size) or len(s) != len(size) or any(
                a < 0 or b < 0 or a + b > n for a, b, n in zip(o, s, size)):
            return False
    full = [c for c in chunks if math.prod(c[1]) > 0]
    for (oa, sa), (ob, sb) in itertools.combinations(full, 2):
        if all(a < b + m and b < a + n for a, n, b, m in zip(oa, sa, ob, sb)):
            return False
    return True


def tile_pieces(size: tuple[int, ...], itemsize: int,
                chunks: Sequence[tuple[tuple[int, ...], tuple[int, ...], RawSource]]
                ) -> tuple[RawSource, ...] | None:
    """The byte ranges, in the row-major order of the whole tensor, that assemble it from
    contiguous chunks ``(offsets, sizes, bytes)``.

    Returns:
        The ranges (adjacent ones of one file merged), or None when the chunks do not tile the
        tensor exactly or would need more than ``MAX_PIECES`` ranges.
    """
    if not _tiles(size, [(o, s) for o, s, _ in chunks]):
        return None
    full = [c for c in chunks if math.prod(c[1]) > 0]
    if not size or len(full) <= 1:
        return tuple(c[2] for c in full)
    split = max((d for d in range(len(size)) if any(s[d] != size[d] for _, s, _ in full)),
                default=0)
    inner = math.prod(size[split + 1:]) * itemsize
    if math.prod(size[:split]) * len(full) > MAX_PIECES * 4:
        return None
    full.sort(key=lambda c: c[0][split])
    strides = [_contiguous(s) for _, s, _ in full]
    out: list[RawSource] = []
    for prefix in itertools.product(*(range(n) for n in size[:split])):
        for (o, s, raw), st in zip(full, strides):
            if not all(a <= p < a + n for p, a, n in zip(prefix, o, s)):
                continue
            local = sum((p - a) * k for p, a, k in zip(prefix, o, st))
            _append(out, RawSource(raw.path, raw.offset + local * itemsize, s[split] * inner))
        if len(out) > MAX_PIECES:
            return None
    return tuple(out)


def _append(out: list[RawSource], piece: RawSource) -> None:
    last = out[-1] if out else None
    if last is not None and last.path == piece.path and last.offset + last.length == piece.offset:
        out[-1] = RawSource(last.path, last.offset, last.length + piece.length)
    else:
        out.append(piece)


def read_pieces(pieces: Sequence[RawSource], nbytes: int) -> bytearray:
    """The concatenation of ``pieces`` (``nbytes`` in all), read straight into one buffer.

    Raises:
        CorruptCheckpointError: a file is missing or ends inside its range.
    """
    buf = bytearray(nbytes)
    view, pos = memoryview(buf), 0
    for piece in pieces:
        if fileio.is_url(piece.path):
            _read_url_piece(piece, view[pos:pos + piece.length])
            pos += piece.length
            continue
        try:
            fd = os.open(piece.path, os.O_RDONLY)
        except FileNotFoundError as e:
            raise CorruptCheckpointError(f"{piece.path}: missing; the checkpoint is "
                                         "incomplete") from e
        try:
            done = 0
            while done < piece.length:
                got = os.preadv(fd, [view[pos + done:pos + piece.length]], piece.offset + done)
                if got <= 0:
                    raise CorruptCheckpointError(f"{piece.path}: cut short inside a tensor's "
                                                 "data; the file is truncated")
                done += got
        finally:
            os.close(fd)
        pos += piece.length
    if pos != nbytes:
        raise CorruptCheckpointError(f"{pieces[0].path if pieces else '?'}: the pieces hold "
                                     f"{pos} bytes, the tensor {nbytes}; the checkpoint is damaged")
    return buf


def _read_url_piece(piece: RawSource, out: memoryview) -> None:
    """Read one byte range of a remote file into ``out`` (a range request through fileio)."""
    with fileio.open_binary(piece.path) as f:
        f.seek(piece.offset)
        data = f.read(piece.length)
    if len(data) != piece.length:
        raise CorruptCheckpointError(f"{piece.path}: cut short inside a tensor's data; "
                                     "the file is truncated")
    out[:] = data
