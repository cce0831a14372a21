"""Writing some tensors of a ``torch.save`` zip under new names, as ``torch.save`` would, by
byte copy and without torch.

``torch.save({new: torch.load(src, weights_only=True)[old] ...})`` writes each storage the kept
tensors view, and each tensor as a view of it. Here each storage record of the source is copied
by kernel copy (every chunk handed to the disk as it is written) and ``data.pkl`` names each
tensor as the same view of it; storages that several kept tensors share stay shared, as
``torch.load`` keeps them. The CRC-32 of every copied storage is computed while copying and must
match the one the source records, so a damaged source is refused rather than rewritten with a
fresh CRC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ckpttools.entries import RawSource
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.pickle.stand_ins import ITEMSIZE
from ckpttools.formats.writers.bytecopy import Progress, TensorData, _no_progress
from ckpttools.formats.writers.torch_zip import TensorSlot, write_torch_zip

__all__ = ["copy_plan", "write_renamed"]

Plan = tuple[dict[str, TensorSlot], list[TensorData], dict[str, tuple[int, str]]]


def copy_plan(reader: CheckpointReader, pairs: Sequence[tuple[str, str]]) -> Plan | None:
    """How to write ``{new: reader's tensor old}`` by byte copy, or None when some tensor is not
    a plain little-endian view of a stored record (then ``torch.save`` must write it).

    Args:
        reader: an open checkpoint.
        pairs: ``(reader key, new name)`` of every tensor to write, in output order.

    Returns:
        ``(slot per new name, one TensorData per storage, the recorded CRC-32 and a tensor
        of each storage by storage key)``.
    """
    if reader.format is not Format.TORCH_ZIP:
        return None
    slots: dict[str, TensorSlot] = {}
    storages: list[TensorData] = []
    crcs: dict[str, tuple[int, str]] = {}
    seen: dict[RawSource, TensorData] = {}
    for old, new in pairs:
        ph = reader.placeholder(old)  # type: ignore[attr-defined]
        src = reader.storage_source(old)  # type: ignore[attr-defined]
        if src is None or ph.layout != "strided" or ph.has_attributes or ph.dtype not in ITEMSIZE:
            return None
        data = seen.get(src)
        if data is None:
            data = seen[src] = TensorData(str(len(storages)), ph.dtype, (src.length,), src.length,
                                          raw=src)
            storages.append(data)
            crcs[data.name] = (reader.storage_crc(old) or 0, old)  # type: ignore[attr-defined]
        elif data.dtype != ph.dtype:  # one record viewed as two dtypes: leave it to torch
            return None
        slots[new] = TensorSlot(data.name, ph.dtype, src.length // ITEMSIZE[ph.dtype],
                                ph.storage_offset, ph.shape, ph.stride, ph.requires_grad,
                                ph.parameter)
    return slots, storages, crcs


def write_renamed(path: str, plan: Plan, source: str, *,
                  on_progress: Progress = _no_progress) -> None:
    """Write ``plan`` (from ``copy_plan``) at ``path`` (no fsync; ``atomic_output`` does it).

    Raises:
        CorruptCheckpointError: a storage's bytes do not match the CRC-32 the source records.
    """
    slots, storages, recorded = plan
    written: dict[str, int] = {}
    obj: Any = dict(slots)
    write_torch_zip(path, obj, storages, on_progress=on_progress, crcs=written)
    for key, (crc, tensor) in recorded.items():
        if crc and written[key] != crc:  # 0: torch.save was told not to record CRCs
            raise CorruptCheckpointError(
                f"{source}: the storage of tensor {tensor} fails its CRC-32 check; the file is "
                "damaged, nothing was written")
