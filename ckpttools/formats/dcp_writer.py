"""Writing a ``torch.distributed.checkpoint`` directory in one process.

Tensors are saved under their flat dotted names (the FQNs DCP gives a nested state_dict, so
``dcp.load`` into ``{"model": {...}}`` finds them); the ckpttools manifest is saved as a bytes
entry named ``ckpttools.manifest`` so the structure and sharing survive. The planner resolves
each tensor only when DCP writes it, so one tensor is materialised at a time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckpttools.formats.bytecopy import Progress, TensorData, _no_progress
from ckpttools.formats.manifest import MANIFEST_KEY

if TYPE_CHECKING:
    from ckpttools.ops.convert_source import Source


def _lazy_planner(loaders: dict[str, TensorData], on_progress: Progress) -> Any:
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    class LazySavePlanner(DefaultSavePlanner):
        """Plans from meta tensors; loads each tensor's data only when it is written."""

        last: Any = None

        def resolve_data(self, write_item: Any) -> Any:
            # NOTE(torch 2.13): FileSystemWriter keeps every tensor of a file in a dict until
            # the file is done; the previous tensor is written by the time the next one is
            # asked for, so its memory is released here (a mapped one just stays mapped)
            if self.last is not None:
                _release(self.last)
                self.last = None
            fqn = write_item.index.fqn
            data = loaders.get(fqn)
            if data is None or data.load is None:
                return super().resolve_data(write_item)
            t = data.load().detach().contiguous()
            on_progress(data.nbytes)
            self.last = t
            return t

    return LazySavePlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


def _release(t: Any) -> None:
    try:
        t.untyped_storage().resize_(0)
    except RuntimeError:
        pass  # not resizable (mapped from a file): its pages are the file's


def write_dcp(folder: str, tensors: Sequence[TensorData], manifest: str, *,
              on_progress: Progress = _no_progress) -> None:
    """Write ``tensors`` and the manifest as a DCP checkpoint into ``folder`` (which exists)."""
    import torch
    import torch.distributed.checkpoint as dcp

    state: dict[str, Any] = {MANIFEST_KEY: manifest}
    for t in tensors:
        state[t.name] = torch.empty(t.shape, dtype=getattr(torch, t.dtype), device="meta")
    loaders = {t.name: _with_loader(t) for t in tensors}
    writer = dcp.FileSystemWriter(folder, single_file_per_rank=True, thread_count=1,
                                  overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, storage_writer=writer, planner=_lazy_planner(loaders, on_progress),
                 no_dist=True)


def _with_loader(t: TensorData) -> TensorData:
    """Load a tensor with a raw range by reading it into memory torch owns (released once
    written), not through the source's mapping, whose touched pages would stay resident."""
    if t.raw is None:
        return t
    from ckpttools.formats.bytecopy import SourceFiles, read_into, tensor_bytes

    def load() -> Any:
        import torch

        flat = torch.empty(t.nbytes, dtype=torch.uint8)  # torch-owned, so it can be released
        files = SourceFiles()
        try:
            read_into(files, t.raw, tensor_bytes(flat))  # type: ignore[arg-type]
        finally:
            files.close()
        return flat.view(getattr(torch, t.dtype)).reshape(t.shape)

    return TensorData(t.name, t.dtype, t.shape, t.nbytes, raw=t.raw, load=load)


def _same_as_source(got: Any, t: Any, files: Any) -> bool:
    """Whether a tensor read back from the output equals its source: against the source's byte
    range read in chunks when it has one (its mapping would stay resident), else loaded."""
    from ckpttools.formats.bytecopy import CHUNK, tensor_bytes
    from ckpttools.ops.convert import tensor_data
    from ckpttools.ops.verify_output import same_bits

    raw = tensor_data(t).raw
    if raw is None:
        return same_bits(got, t.load())
    got = got.contiguous()
    view, fd = tensor_bytes(got), files.fd(raw.path)
    if len(view) != raw.length:
        return False
    return all(os.pread(fd, min(CHUNK, raw.length - i), raw.offset + i) == bytes(view[i:i + CHUNK])
               for i in range(0, raw.length, CHUNK))


def verify_dcp(folder: str, source: Source) -> list[str]:
    """Load the written DCP back tensor by tensor and compare with ``source``."""
    import torch
    import torch.distributed.checkpoint as dcp

    from ckpttools.formats.manifest import Manifest
    from ckpttools.ops.convert import output_manifest
    from ckpttools.formats.bytecopy import SourceFiles

    problems: list[str] = []
    reader = dcp.FileSystemReader(folder)
    names = set(reader.read_metadata().state_dict_metadata)
    files = SourceFiles()
    for name, t in source.tensors.items():
        if name not in names:
            problems.append(f"{name}: missing from the output")
            continue
        target = {name: torch.empty(t.layout.shape, dtype=getattr(torch, t.layout.dtype))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(target, storage_reader=dcp.FileSystemReader(folder), no_dist=True)
        if not _same_as_source(target.pop(name), t, files):
            problems.append(f"{name}: bytes differ from the source")
    files.close()
    holder: dict[str, Any] = {MANIFEST_KEY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # our own output, just written: its one bytes entry is the manifest string
        dcp.load(holder, storage_reader=dcp.FileSystemReader(folder), no_dist=True)
    expected = output_manifest(source).to_json()
    if Manifest.from_json(str(holder[MANIFEST_KEY])).to_json() != expected:
        problems.append(f"{MANIFEST_KEY}: structure differs from the source")
    return problems
