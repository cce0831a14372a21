"""Writing a conversion source as a ``.pth`` (torch zip), restoring storage sharing.

Tensors that shared a storage in the original (by the manifest's storage ids) become views of
one storage again, at their original offsets and strides. A storage one tensor covers exactly
is copied from that tensor's byte range without torch; others are assembled in memory, one
storage at a time.
"""

from __future__ import annotations

from typing import Any

from ckpttools.formats.writers.bytecopy import Progress, TensorData, _no_progress
from ckpttools.formats.manifest import dtype_size
from ckpttools.formats.manifest_tree import decode_tree
from ckpttools.formats.writers.torch_zip import TensorSlot, write_torch_zip
from ckpttools.ops.convert.source import Source, SourceTensor


def _overlaps(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a view may reach one element twice (``expand``, ``unfold``): torch refuses to
    ``copy_`` into such a view. Conservative: a view that might overlap counts as overlapping."""
    reach = 0
    for st, size in sorted((st, size) for size, st in zip(shape, stride) if size > 1):
        if st <= reach:
            return True
        reach += st * (size - 1)
    return False


def _place(buf: Any, typed: Any, member: SourceTensor) -> None:
    """Write one view's values at its place in the storage ``buf`` (``typed`` is buf as its dtype)."""
    import torch

    lay = member.layout
    if not _overlaps(lay.shape, lay.stride):
        typed.as_strided(lay.shape, lay.stride, lay.offset).copy_(member.load())
        return
    # elements reached twice hold the same value (one memory location), so scatter the bytes
    # of every element to its place; which duplicate lands last does not matter
    size = typed.element_size()
    index = torch.arange(typed.numel()).as_strided(lay.shape, lay.stride, lay.offset)
    index = (index.reshape(-1, 1) * size + torch.arange(size)).reshape(-1)
    values = member.load().contiguous().reshape(-1).view(torch.uint8)
    buf[index] = values


def _assemble(members: list[SourceTensor], nbytes: int) -> Any:
    """One storage's bytes rebuilt from the tensors that view it (unviewed bytes are zero)."""
    import torch

    dtype = getattr(torch, members[0].layout.dtype)
    buf = torch.zeros(nbytes, dtype=torch.uint8)
    typed = buf.view(dtype) if nbytes else torch.empty(0, dtype=dtype)
    for m in members:
        if any(d == 0 for d in m.layout.shape):
            continue
        _place(buf, typed, m)
    return buf


def storage_plan(source: Source) -> tuple[dict[str, TensorSlot], list[TensorData]]:
    """Slots for every tensor and one ``TensorData`` per storage, in first-use order."""
    groups: dict[str, list[SourceTensor]] = {}
    for t in source.tensors.values():
        groups.setdefault(t.layout.storage, []).append(t)
    slots: dict[str, TensorSlot] = {}
    storages: list[TensorData] = []
    for key, (sid, members) in enumerate(groups.items()):
        first = members[0].layout
        nbytes = first.storage_nbytes
        whole = next((m for m in members if m.layout.is_whole_storage and m.raw is not None
                      and m.raw.length == nbytes), None)
        pieced = next((m for m in members if m.layout.is_whole_storage and m.raw is None
                       and sum(p.length for p in m.pieces) == nbytes > 0), None)
        if whole is not None:
            data = TensorData(str(key), first.dtype, (nbytes,), nbytes, raw=whole.raw,
                              crc=whole.crc)
        elif pieced is not None:
            data = TensorData(str(key), first.dtype, (nbytes,), nbytes, pieces=pieced.pieces)
        elif len(members) == 1 and members[0].layout.is_whole_storage:
            data = TensorData(str(key), first.dtype, (nbytes,), nbytes, load=members[0].load)
        else:
            data = TensorData(str(key), first.dtype, (nbytes,), nbytes,
                              load=lambda m=members, n=nbytes: _assemble(m, n))
        storages.append(data)
        numel = nbytes // dtype_size(first.dtype)
        for m in members:
            lay = m.layout
            slots[m.name] = TensorSlot(str(key), lay.dtype, numel, lay.offset, lay.shape,
                                       lay.stride, lay.requires_grad, lay.parameter)
    return slots, storages


def write_pth(path: str, source: Source, *, on_progress: Progress = _no_progress,
              crcs: dict[str, int] | None = None) -> None:
    """Write ``source`` at ``path`` as ``torch.save`` would have written the original.

    ``crcs``, when given, gets the CRC-32 of each storage copied whole from a source byte range
    (by storage record key), as computed while copying.
    """
    slots, storages = storage_plan(source)
    obj = decode_tree(source.root, slots.__getitem__)
    written: dict[str, int] = {}
    write_torch_zip(path, obj, storages, on_progress=on_progress, crcs=written)
    if crcs is not None:
        crcs.update((d.name, written[d.name]) for d in storages if d.raw is not None or d.pieces)
