"""Chunks laid out as byte ranges in the whole tensor's row-major order (``tile_pieces``), checked
against torch assembling the same chunks, and refused when the chunks do not tile the tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.entries import RawSource
from ckpttools.formats.ranges import read_pieces, tile_pieces
from ckpttools.formats.writers.bytecopy import tensor_bytes

Chunk = tuple[tuple[int, ...], tuple[int, ...]]


def _write_chunks(tmp_path: Path, full: torch.Tensor, chunks: list[Chunk]
                  ) -> list[tuple[tuple[int, ...], tuple[int, ...], RawSource]]:
    """Each chunk of ``full`` as the contiguous bytes of its own file, as a rank saves it."""
    out = []
    for i, (offsets, sizes) in enumerate(chunks):
        part = full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))].contiguous()
        path = tmp_path / f"rank{i}.bin"
        path.write_bytes(b"pad!" + bytes(tensor_bytes(part)))
        out.append((offsets, sizes, RawSource(str(path), 4, part.numel() * part.element_size())))
    return out


@pytest.mark.parametrize(("shape", "chunks"), [
    ((5, 4), [((0, 0), (3, 4)), ((3, 0), (2, 4))]),  # FSDP: dim 0, uneven
    ((7, 6), [((0, 3), (7, 3)), ((0, 0), (7, 3))]),  # column split, listed out of order
    ((3, 5, 4), [((0, 0, 0), (3, 3, 4)), ((0, 3, 0), (3, 2, 4))]),  # a middle dimension
    ((4, 6), [((0, 0), (2, 3)), ((0, 3), (2, 3)), ((2, 0), (2, 3)), ((2, 3), (2, 3))]),  # 2-D mesh
    ((1, 3), [((0, 0), (1, 3)), ((1, 0), (0, 3))]),  # an empty chunk
], ids=["dim0", "columns", "middle", "mesh", "empty"])
def test_pieces_assemble_the_tensor(tmp_path: Path, shape: tuple[int, ...],
                                    chunks: list[Chunk]) -> None:
    full = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    pieces = tile_pieces(shape, 4, _write_chunks(tmp_path, full, chunks))
    assert pieces is not None
    got = torch.frombuffer(read_pieces(pieces, full.numel() * 4), dtype=torch.float32)
    assert torch.equal(got.reshape(shape), full)


@pytest.mark.parametrize("chunks", [
    [((0, 0), (3, 4)), ((2, 0), (3, 4))],  # overlap
    [((0, 0), (3, 4)), ((3, 0), (1, 4))],  # a gap
    [((0, 0), (3, 4)), ((2, 0), (2, 4))],  # overlap and a gap: the total alone would pass
], ids=["overlap", "gap", "overlap-same-total"])
def test_chunks_that_do_not_tile_are_refused(tmp_path: Path, chunks: list[Chunk]) -> None:
    raw = RawSource(str(tmp_path / "x"), 0, 0)
    assert tile_pieces((5, 4), 4, [(o, s, raw) for o, s in chunks]) is None
