"""Writing a ``torch.distributed.checkpoint`` directory without torch.

The layout is what torch 2.13's ``FileSystemWriter(single_file_per_rank=True)`` writes for one
process: one data file ``__0_0.distcp`` holding every item back to back (bytes items first),
each item a complete ``torch.save`` zip archive (DCP's default ``TORCH_SAVE`` serialization:
``read_data`` hands each item's byte range to ``torch.load``), and ``.metadata`` (see
``ckpttools.formats.writers.dcp_metadata``). Tensors are saved under their flat dotted names
(the FQNs DCP gives a nested state_dict, so ``dcp.load`` into ``{"model": {...}}`` finds them);
the ckpttools manifest is a bytes item named ``ckpttools.manifest`` (a pickled ``str``) so the
structure and sharing survive, and each non-tensor value is a bytes item under its FQN too. A tensor's bytes go by kernel copy from the source's byte range
(a worker thread computes the zip CRC), or from one loaded tensor (views, casts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

from ckpttools.formats.writers.bytecopy import Progress, SourceFiles, TensorData, _no_progress
from ckpttools.formats.writers.dcp_metadata import DcpItem, dcp_metadata
from ckpttools.formats.manifest import MANIFEST_KEY, contiguous_stride
from ckpttools.formats.writers.torch_zip import TensorSlot, ZipArchiveWriter, pickle_tree, write_records

DATA_FILE = "__0_0.distcp"  # FileSystemWriter's name for rank 0's first file
METADATA_FILE = ".metadata"


def _write_item(fd: int, path: str, pool: Executor, files: SourceFiles, data_pkl: bytes,
                tensor: TensorData | None, on_progress: Progress, zip64: bool,
                crcs: dict[str, int] | None = None) -> tuple[int, int]:
    """Append one ``torch.save`` archive (its storage, if any, is ``data/0``); returns its range."""
    base = os.lseek(fd, 0, os.SEEK_CUR)
    zf = ZipArchiveWriter(fd, path, pool, base=base, zip64=zip64)
    item_crcs: dict[str, int] = {}
    write_records(zf, files, data_pkl, [("0", tensor)] if tensor is not None else [], on_progress,
                  item_crcs)
    if crcs is not None and tensor is not None:
        crcs[tensor.name] = item_crcs["0"]
    return base, zf.pos


def _tensor_pickle(t: TensorData) -> bytes:
    """``data.pkl`` of ``torch.save(t)`` for a contiguous tensor owning its storage ``0``."""
    numel = 1
    for d in t.shape:
        numel *= d
    return pickle_tree(TensorSlot("0", t.dtype, numel, 0, t.shape, contiguous_stride(t.shape)))


def write_dcp(folder: str, tensors: Sequence[TensorData], manifest: str, *,
              on_progress: Progress = _no_progress, zip64: bool = False,
              crcs: dict[str, int] | None = None,
              values: Sequence[tuple[str, bytes]] = ()) -> None:
    """Write ``tensors`` and the manifest as a DCP checkpoint into ``folder`` (which exists).

    No fsync: ``atomic_output`` syncs the folder before renaming it into place.

    Args:
        folder: the (temporary) checkpoint folder.
        tensors: written in order, each as one whole chunk under its name.
        manifest: the ckpttools manifest JSON, saved as a bytes item.
        on_progress: called with the number of bytes written.
        zip64: use zip64 fields in every item, not only past 4 GiB (for tests).
        crcs: when given, filled with each tensor's CRC-32 by name (as computed while copying).
        values: ``(fqn, data.pkl)`` of each non-tensor value, written as a bytes item so that
            ``dcp.load`` finds it.
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
        for fqn, data_pkl in values:
            at = _write_item(fd, path, pool, files, data_pkl, None, on_progress, zip64)
            items.append(DcpItem(fqn, None, (), DATA_FILE, *at))
        for t in tensors:
            at = _write_item(fd, path, pool, files, _tensor_pickle(t), t, on_progress, zip64,
                             crcs)
            items.append(DcpItem(t.name, t.dtype, t.shape, DATA_FILE, *at))
    finally:
        pool.shutdown()
        os.close(fd)
        files.close()
    with open(os.path.join(folder, METADATA_FILE), "wb") as f:
        f.write(dcp_metadata(items))
