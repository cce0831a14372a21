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

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ckpttools.entries import RawSource
from ckpttools.formats.base import CheckpointReader
from ckpttools.formats.manifest import Node, TensorLayout
from ckpttools.formats.writers.bytecopy import SMALL, SourceFiles, crc_of_range, ranges_equal
from ckpttools.ops.object_graph import GraphComparison, manifest_graph, pickled_graph
from ckpttools.ops.convert.source import Source, SourceTensor, tensor_data

MAX_REPORTED = 20
READERS = 2  # threads reading the output back for its CRC-32s


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


def _stored_shapes(reader: CheckpointReader) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each stored tensor's dtype and shape as the file records them (not the manifest)."""
    if hasattr(reader, "tensor_meta"):  # DCP: .metadata, since entries follow the manifest
        return _DcpShapes(reader)  # type: ignore[return-value]
    return {e.key: (e.dtype, tuple(e.shape)) for e in reader.tensor_entries()}


class _DcpShapes:
    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def get(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        found = self.reader.tensor_meta(name)
        return None if found is None else (found[0], tuple(found[1]))


def _stored_problem(stored: Any, name: str, layout: TensorLayout) -> str | None:
    """A tensor of safetensors/DCP output must be stored contiguously as its layout says."""
    found = stored.get(name)
    if found is None:
        return f"{name}: missing from the output"
    if found != (layout.dtype, layout.shape):
        return f"{name}: stored as {found[0]} {list(found[1])}, the manifest says " \
               f"{layout.dtype} {list(layout.shape)}"
    return None


def compare_graphs(source: Source, root: Node, layouts: dict[str, TensorLayout]
                   ) -> tuple[str | None, list[tuple[str, str, str]]]:
    """The first structural difference between ``source`` and an output's graph, and the
    (path, source tensor, output tensor) pairs met on the way."""
    comparison = GraphComparison({n: t.layout for n, t in source.tensors.items()}, layouts)
    return comparison.first_difference(source.root, root), comparison.pairs


class _Bytes:
    """Tensor bytes of the output against the source. Where the CRC-32 of a copied byte range
    is known (computed while copying, or recorded by the source's zip), the output's range is
    read back once (from the page cache the write filled) and its CRC compared: one pass at
    memory speed instead of a second read of both files. Elsewhere (casts, assembled storages)
    and after a CRC mismatch, both sides are compared in full.

    The read-backs run on two worker threads, started in file order before the comparison
    walks the tensors (``preadv`` and the CRC release the GIL), so two ranges are read at once.
    """

    def __init__(self, reader: Any, files: SourceFiles, crcs: dict[str, int] | None,
                 pickled: bool) -> None:
        self.reader, self.files, self.crcs, self.pickled = reader, files, crcs or {}, pickled
        self.checked: dict[str, bool] = {}
        self.pending: dict[str, Future[int]] = {}
        # start() and problem() both ask where each name lies; finding it in a DCP output
        # parses the item's archive, so it is done once
        self.found: dict[str, tuple[str, RawSource | None]] = {}
        self.pool = ThreadPoolExecutor(READERS, thread_name_prefix="verify-crc32")

    def _where(self, name: str) -> tuple[str, RawSource | None]:
        """The CRC key of ``name``'s bytes (its storage, in a .pth) and their range in the
        output, when a CRC is known for them."""
        found = self.found.get(name)
        if found is None:
            found = self.found[name] = self._locate(name)
        return found

    def _locate(self, name: str) -> tuple[str, RawSource | None]:
        if self.pickled and self.crcs:
            key = str(self.reader.placeholder(name).storage_key)
            return key, self.reader.storage_source(name) if key in self.crcs else None
        return name, self.reader.raw_source(name) if name in self.crcs else None

    def start(self, names: list[str]) -> None:
        """Start reading back the output's CRC-checked ranges of ``names`` (the larger ones)."""
        for name in names:
            key, where = self._where(name)
            # a small range costs less to read inline than to hand to a thread
            if where is not None and where.length > SMALL and key not in self.pending:
                self.files.fd(where.path)  # opened here: the fd cache is not thread-safe
                self.pending[key] = self.pool.submit(crc_of_range, self.files, where)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)

    def problem(self, t: SourceTensor, name: str) -> str | None:
        """None when the output's bytes of ``name`` are the source's, else what differs."""
        key, where = self._where(name)
        if where is not None:
            if key not in self.checked:
                future = self.pending.get(key)
                crc = future.result() if future else crc_of_range(self.files, where)
                self.checked[key] = crc == self.crcs[key]
            if self.checked[key]:
                return None
        if not _same_bytes(t, self.reader, name, self.files):
            return "tensor bytes differ from the source"
        if where is not None:  # equal bytes, yet not the CRC the source records for them
            return "the source's bytes fail the CRC-32 its zip records; the source is damaged"
        return None


def _compare_reader(reader: CheckpointReader, source: Source, *, pickled: bool,
                    files: SourceFiles, crcs: dict[str, int] | None = None) -> list[str]:
    graph = pickled_graph(reader) if pickled else manifest_graph(reader)
    if graph is None:
        return [f"{reader.path}: the output has no ckpttools manifest"]
    difference, pairs = compare_graphs(source, *graph)
    if difference is not None:
        return [difference]
    if hasattr(reader, "value_names") and (lost := _values_missing(reader, source)):
        return [f"{lost[0]}: missing from the output's DCP items (dcp.load would not find it)"]
    stored = None if pickled else _stored_shapes(reader)
    shape_problems = {out: _stored_problem(stored, out, graph[1][out])
                      for _, _, out in pairs} if stored is not None else {}
    check = _Bytes(reader, files, crcs, pickled)
    try:
        check.start([out for _, _, out in pairs if shape_problems.get(out) is None])
        return _compare_tensors(check, source, pairs, shape_problems)
    finally:
        check.close()


def _values_missing(reader: Any, source: Source) -> list[str]:
    """The non-tensor values a DCP output should hold as bytes items but does not."""
    from ckpttools.formats.manifest import MANIFEST_KEY
    from ckpttools.ops.convert.dcp_values import dcp_values

    have = set(reader.value_names())
    expected = dcp_values(source.root, {*source.tensors, MANIFEST_KEY})
    return [fqn for fqn, _ in expected if fqn not in have]


def _compare_tensors(check: _Bytes, source: Source, pairs: list[tuple[str, str, str]],
                     shape_problems: dict[str, str | None]) -> list[str]:
    """What differs, tensor by tensor in order (a stored shape, else the bytes), up to
    MAX_REPORTED problems."""
    problems: list[str] = []
    for path, src_name, out_name in pairs:
        problem = shape_problems.get(out_name)
        if problem is None:
            found = check.problem(source.tensors[src_name], out_name)
            problem = f"{path}: {found}" if found else None
        if problem is not None:
            problems.append(problem)
        if len(problems) >= MAX_REPORTED:
            break
    return problems


def verify_output(path: str, target: str, source: Source, *, sharded: bool = False,
                  crcs: dict[str, int] | None = None) -> list[str]:
    """Re-open a conversion's output at ``path`` and list how it differs from ``source``
    (empty when it is the same object graph with the same tensor bits).

    Args:
        crcs: CRC-32s the writer computed of the source bytes it copied (``write_output``);
            those tensors are checked by a CRC of the output's bytes, the rest in full.
    """
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
            return _compare_reader(reader, source, pickled=target == "pth", files=files,
                                   crcs=crcs)
    finally:
        files.close()

