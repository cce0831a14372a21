"""Writing a ``torch.distributed.checkpoint`` directory in one process.

Tensors are saved under their flat dotted names (the FQNs DCP gives a nested state_dict, so
``dcp.load`` into ``{"model": {...}}`` finds them); the ckpttools manifest is saved as a bytes
entry named ``ckpttools.manifest`` so the structure and sharing survive. The planner resolves
each tensor only when DCP writes it, so one tensor is materialised at a time.
"""

from __future__ import annotations

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

        def resolve_data(self, write_item: Any) -> Any:
            fqn = write_item.index.fqn
            data = loaders.get(fqn)
            if data is None or data.load is None:
                return super().resolve_data(write_item)
            t = data.load().detach().contiguous()
            on_progress(data.nbytes)
            return t

    return LazySavePlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


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
    if t.load is not None:
        return t
    from ckpttools.formats.bytecopy import SourceFiles, bytes_of_range

    def load() -> Any:
        import torch

        files = SourceFiles()
        try:
            raw = bytearray(bytes_of_range(files, t.raw))  # type: ignore[arg-type]
        finally:
            files.close()
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        return flat.view(getattr(torch, t.dtype)).reshape(t.shape)

    return TensorData(t.name, t.dtype, t.shape, t.nbytes, raw=t.raw, load=load)


def verify_dcp(folder: str, source: Source) -> list[str]:
    """Load the written DCP back tensor by tensor and compare with ``source``."""
    import torch
    import torch.distributed.checkpoint as dcp

    from ckpttools.formats.manifest import Manifest
    from ckpttools.ops.convert import output_manifest
    from ckpttools.ops.verify_output import same_bits

    problems: list[str] = []
    reader = dcp.FileSystemReader(folder)
    names = set(reader.read_metadata().state_dict_metadata)
    for name, t in source.tensors.items():
        if name not in names:
            problems.append(f"{name}: missing from the output")
            continue
        target = {name: torch.empty(t.layout.shape, dtype=getattr(torch, t.layout.dtype))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(target, storage_reader=dcp.FileSystemReader(folder), no_dist=True)
        if not same_bits(target[name], t.load()):
            problems.append(f"{name}: bytes differ from the source")
    holder: dict[str, Any] = {MANIFEST_KEY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # our own output, just written: its one bytes entry is the manifest string
        dcp.load(holder, storage_reader=dcp.FileSystemReader(folder), no_dist=True)
    expected = output_manifest(source).to_json()
    if Manifest.from_json(str(holder[MANIFEST_KEY])).to_json() != expected:
        problems.append(f"{MANIFEST_KEY}: structure differs from the source")
    return problems
