"""Re-reading a conversion's output and comparing it with its source.

The output is read back through the restricted readers (no pickle execution, no torch for the
structure): a ``.pth`` by walking its ``data.pkl``, safetensors and DCP by the manifest they
store. Its object graph is compared with the source's node by node (``graph.py``): container
types, key order, attributes such as ``_metadata``, scalars, tensor dtype, shape, stride,
offset and storage sharing. The first difference is reported with its path
(``model._metadata['1']['version']``). Tensor bytes are then compared bit for bit: by byte
ranges chunk by chunk when both sides have them, else one loaded tensor at a time.
"""

from __future__ import annotations

from typing import Any

from ckpttools.formats.base import CheckpointReader
from ckpttools.formats.manifest import Node, TensorLayout
from ckpttools.formats.writers.bytecopy import SourceFiles, ranges_equal
from ckpttools.ops.object_graph import GraphComparison, manifest_graph, pickled_graph
from ckpttools.ops.convert.source import Source, SourceTensor, tensor_data

MAX_REPORTED = 20


def same_bits(a: Any, b: Any) -> bool:
    """Whether two tensors have the same dtype, shape and bytes."""
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


def _same_bytes(t: SourceTensor, reader: CheckpointReader, key: str, files: SourceFiles) -> bool:
    """Compare one written tensor with its source: by byte ranges read in chunks when both have
    them (no torch, nothing mapped), else as loaded tensors (views, casts)."""
    raw, out = tensor_data(t).raw, reader.raw_source(key)
    if raw is not None and out is not None:
        return ranges_equal(files, raw, out)
    return same_bits(reader.load(key), t.load().contiguous())


def _stored_problem(reader: CheckpointReader, name: str, layout: TensorLayout) -> str | None:
    """A tensor of safetensors/DCP output must be stored contiguously as its layout says."""
    meta = getattr(reader, "tensor_meta", None)
    if callable(meta):
        found = meta(name)
        stored = None if found is None else (found[0], tuple(found[1]))
    else:
        entry = next((e for e in reader.tensor_entries() if e.key == name), None)
        stored = None if entry is None else (entry.dtype, tuple(entry.shape))
    if stored is None:
        return f"{name}: missing from the output"
    if stored != (layout.dtype, layout.shape):
        return f"{name}: stored as {stored[0]} {list(stored[1])}, the manifest says " \
               f"{layout.dtype} {list(layout.shape)}"
    return None


def compare_graphs(source: Source, root: Node, layouts: dict[str, TensorLayout]
                   ) -> tuple[str | None, list[tuple[str, str, str]]]:
    """The first structural difference between ``source`` and an output's graph, and the
    (path, source tensor, output tensor) pairs met on the way."""
    comparison = GraphComparison({n: t.layout for n, t in source.tensors.items()}, layouts)
    return comparison.first_difference(source.root, root), comparison.pairs


def _compare_reader(reader: CheckpointReader, source: Source, *, pickled: bool,
                    files: SourceFiles) -> list[str]:
    graph = pickled_graph(reader) if pickled else manifest_graph(reader)
    if graph is None:
        return [f"{reader.path}: the output has no ckpttools manifest"]
    difference, pairs = compare_graphs(source, *graph)
    if difference is not None:
        return [difference]
    problems: list[str] = []
    for path, src_name, out_name in pairs:
        problem = None if pickled else _stored_problem(reader, out_name, graph[1][out_name])
        if problem is None and not _same_bytes(source.tensors[src_name], reader, out_name, files):
            problem = f"{path}: tensor bytes differ from the source"
        if problem is not None:
            problems.append(problem)
        if len(problems) >= MAX_REPORTED:
            break
    return problems


def verify_output(path: str, target: str, source: Source, *, sharded: bool = False) -> list[str]:
    """Re-open a conversion's output at ``path`` and list how it differs from ``source``
    (empty when it is the same object graph with the same tensor bits)."""
    reader: CheckpointReader
    if target == "pth":
        from ckpttools.formats.torch_zip import TorchZipReader

        reader = TorchZipReader(path)
    elif target == "dcp":
        from ckpttools.formats.dcp_dir import DcpReader

        reader = DcpReader(path)
    elif sharded:
        from ckpttools.formats.safetensors_sharded import ShardedSafetensorsReader

        reader = ShardedSafetensorsReader(path)
    else:
        from ckpttools.formats.safetensors_file import SafetensorsReader

        reader = SafetensorsReader(path)
    files = SourceFiles()
    try:
        with reader:
            return _compare_reader(reader, source, pickled=target == "pth", files=files)
    finally:
        files.close()

