"""Writing a ``torch.distributed.checkpoint`` directory without torch.

The layout is what torch 2.13's ``FileSystemWriter(single_file_per_rank=True)`` writes for one
process: one data file ``__0_0.distcp`` holding every item back to back (bytes items first),
each item a complete ``torch.save`` zip archive (DCP's default ``TORCH_SAVE`` serialization:
``read_data`` hands each item's byte range to ``torch.load``), and ``.metadata`` (see
``ckpttools.formats.dcp_metadata_writer``). Tensors are saved under their flat dotted names
(the FQNs DCP gives a nested state_dict, so ``dcp.load`` into ``{"model": {...}}`` finds them);
the ckpttools manifest is a bytes item named ``ckpttools.manifest`` (a pickled ``str``) so the
structure and sharing survive. A tensor's bytes go by kernel copy from the source's byte range
(a worker thread computes the zip CRC), or from one loaded tensor (views, casts).
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

from ckpttools.formats.bytecopy import (Progress, SourceFiles, TensorData, _no_progress,
                                       copy_raw_crc, write_tensor)
from ckpttools.formats.dcp_metadata_writer import DcpItem, dcp_metadata
from ckpttools.formats.manifest import MANIFEST_KEY, contiguous_stride
from ckpttools.formats.torch_zip_writer import TensorSlot, _Entry, _ZipOut, pickle_tree

DATA_FILE = "__0_0.distcp"  # FileSystemWriter's name for rank 0's first file
METADATA_FILE = ".metadata"


class _ItemZip(_ZipOut):
    """A ``torch.save`` archive embedded at ``base`` of the data file: its own offsets count
    from its first byte, as ``torch.load`` of the item's byte range sees them."""

    def __init__(self, fd: int, path: str, pool: Executor, base: int, *,
                 zip64: bool = False) -> None:
        super().__init__(fd, path, pool, zip64=zip64)
        self.base = base

    def end(self, entry: _Entry, crc: int) -> None:
        entry.crc = crc
        os.pwrite(self.fd, struct.pack("<L", crc), self.base + entry.offset + 14)


def _write_storage(zf: _ItemZip, files: SourceFiles, data: TensorData,
                   on_progress: Progress) -> None:
    entry = zf.begin("data/0", data.nbytes)
    if data.raw is not None:
        if data.raw.length != data.nbytes:
            raise ValueError(f"{data.name}: raw range of {data.raw.length} bytes for a "
                             f"{data.nbytes}-byte tensor")
        crc = copy_raw_crc(files, data.raw, zf.fd, zf.pool, on_progress=on_progress)
    elif data.load is not None:
        crc = write_tensor(data.load(), zf.fd, crc=True, on_progress=on_progress)
    else:
        raise ValueError(f"{data.name}: no source for the tensor's bytes")
    zf.pos += data.nbytes
    if os.lseek(zf.fd, 0, os.SEEK_CUR) != zf.base + zf.pos:
        raise ValueError(f"{data.name}: tensor bytes written differ from its size")
    zf.end(entry, crc)


def _write_item(fd: int, path: str, pool: Executor, files: SourceFiles, data_pkl: bytes,
                tensor: TensorData | None, on_progress: Progress, zip64: bool) -> tuple[int, int]:
    """Append one ``torch.save`` archive (records in torch's order); returns its range."""
    base = os.lseek(fd, 0, os.SEEK_CUR)
    zf = _ItemZip(fd, path, pool, base, zip64=zip64)
    zf.record("data.pkl", data_pkl)
    zf.record(".format_version", b"1")
    zf.record(".storage_alignment", b"64")
    zf.record("byteorder", b"little")
    if tensor is not None:
        _write_storage(zf, files, tensor, on_progress)
    zf.record("version", b"3\n")
    zf.record(".data/serialization_id",
              "".join(random.choice("0123456789") for _ in range(40)).encode())
    zf.finish()
    return base, zf.pos


def _tensor_pickle(t: TensorData) -> bytes:
    """``data.pkl`` of ``torch.save(t)`` for a contiguous tensor owning its storage ``0``."""
    numel = 1
    for d in t.shape:
        numel *= d
    return pickle_tree(TensorSlot("0", t.dtype, numel, 0, t.shape, contiguous_stride(t.shape)))


def write_dcp(folder: str, tensors: Sequence[TensorData], manifest: str, *,
              on_progress: Progress = _no_progress, zip64: bool = False) -> None:
    """Write ``tensors`` and the manifest as a DCP checkpoint into ``folder`` (which exists).

    No fsync: ``atomic_output`` syncs the folder before renaming it into place.

    Args:
        folder: the (temporary) checkpoint folder.
        tensors: written in order, each as one whole chunk under its name.
        manifest: the ckpttools manifest JSON, saved as a bytes item.
        on_progress: called with the number of bytes written.
        zip64: use zip64 fields in every item, not only past 4 GiB (for tests).
    """
    path = os.path.join(folder, DATA_FILE)
    items: list[DcpItem] = []
    files = SourceFiles()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pool = ThreadPoolExecutor(1, thread_name_prefix="crc32")
    try:
        at = _write_item(fd, path, pool, files, pickle_tree(manifest), None, on_progress,
                         zip64)
        items.append(DcpItem(MANIFEST_KEY, None, (), DATA_FILE, *at))
        for t in tensors:
            at = _write_item(fd, path, pool, files, _tensor_pickle(t), t, on_progress, zip64)
            items.append(DcpItem(t.name, t.dtype, t.shape, DATA_FILE, *at))
    finally:
        pool.shutdown()
        os.close(fd)
        files.close()
    with open(os.path.join(folder, METADATA_FILE), "wb") as f:
        f.write(dcp_metadata(items))
