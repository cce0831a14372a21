"""Re-reading a conversion's output and comparing it with its source.

Tensors are compared bit for bit (after the requested cast): byte ranges chunk by chunk when
both sides have them, else one loaded tensor at a time. Structure is compared as encoded
manifest trees, so int vs str keys, tuple vs list and numpy values count.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckpttools.entries import RawSource, TensorRef
from ckpttools.formats.base import CheckpointReader
from ckpttools.formats.writers.bytecopy import SourceFiles, ranges_equal
from ckpttools.formats.manifest import MANIFEST_KEY, Manifest, Node, iter_nodes
from ckpttools.formats.manifest_tree import TreeEncoder
from ckpttools.ops.convert.source import Source, SourceTensor, output_manifest, tensor_data

MAX_REPORTED = 20


def same_bits(a: Any, b: Any) -> bool:
    """Whether two tensors have the same dtype, shape and bytes."""
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


def _own_bytes(t: SourceTensor) -> RawSource | None:

    return tensor_data(t).raw


def _same_bytes(t: SourceTensor, reader: CheckpointReader, key: str, files: SourceFiles) -> bool:
    """Compare one written tensor with its source: by byte ranges read in chunks when both have
    them (no torch, nothing mapped), else as loaded tensors (views, casts)."""
    raw, out = _own_bytes(t), reader.raw_source(key)
    if raw is not None and out is not None:
        return ranges_equal(files, raw, out)
    return same_bits(reader.load(key), t.load().contiguous())


def _check_file(path: str, names: list[str], source: Source, files: SourceFiles) -> list[str]:
    from ckpttools.formats.safetensors_file import SafetensorsReader

    problems: list[str] = []
    # the reader checks the header as strictly as the safetensors library does
    with SafetensorsReader(path) as reader:
        entries = {e.key: e for e in reader.tensor_entries()}
        for name in names:
            t, entry = source.tensors[name], entries.get(name)
            if entry is None:
                problems.append(f"{name}: missing from {os.path.basename(path)}")
            elif entry.dtype != t.layout.dtype or tuple(entry.shape) != t.layout.shape:
                problems.append(f"{name}: dtype or shape differs")
            elif not _same_bytes(t, reader, name, files):
                problems.append(f"{name}: bytes differ from the source")
    return problems


def verify_safetensors(path: str, source: Source, *, sharded: bool) -> list[str]:
    """Compare a safetensors file or sharded folder with ``source``."""

    if sharded:
        from ckpttools.formats.writers.safetensors_file import INDEX_NAME

        with open(os.path.join(path, INDEX_NAME), encoding="utf-8") as f:
            index = json.load(f)
        text = index["metadata"].get(MANIFEST_KEY)
        by_file: dict[str, list[str]] = {}
        for name, file in index["weight_map"].items():
            by_file.setdefault(os.path.join(path, file), []).append(name)
    else:
        from ckpttools.formats.safetensors_file import read_header

        text = read_header(path)[1].get("__metadata__", {}).get(MANIFEST_KEY)
        by_file = {path: list(source.tensors)}
    problems = []
    if text is None or Manifest.from_json(text).to_json() != output_manifest(source).to_json():
        problems.append(f"{MANIFEST_KEY}: structure differs from the source")
    missing = set(source.tensors) - {n for names in by_file.values() for n in names}
    problems += [f"{n}: missing from the output" for n in sorted(missing)]
    files = SourceFiles()
    try:
        for file, names in by_file.items():
            problems += _check_file(file, names, source, files)
    finally:
        files.close()
    return problems


def verify_dcp(path: str, source: Source) -> list[str]:
    """Compare a DCP directory with ``source``: the manifest, then each tensor's dtype and
    shape as ``.metadata`` records them and its bytes (byte ranges of both sides when they have
    them, so no torch; else one loaded tensor at a time)."""
    from ckpttools.formats.dcp_dir import DcpReader

    problems: list[str] = []
    files = SourceFiles()
    try:
        with DcpReader(path) as reader:
            text = reader.manifest()
            if text is None or Manifest.from_json(text).to_json() != \
                    output_manifest(source).to_json():
                problems.append(f"{MANIFEST_KEY}: structure differs from the source")
            for name, t in source.tensors.items():
                meta = reader.tensor_meta(name)
                if meta is None:
                    problems.append(f"{name}: missing from the output")
                elif meta != (t.layout.dtype, t.layout.shape):
                    problems.append(f"{name}: dtype or shape differs")
                elif not _same_bytes(t, reader, name, files):
                    problems.append(f"{name}: bytes differ from the source")
                if len(problems) >= MAX_REPORTED:
                    break
    finally:
        files.close()
    return problems


def canonical(root: Node, names: list[str]) -> str:
    """The tree as JSON with tensor names replaced by their order of appearance."""
    order = {n: i for i, n in enumerate(names)}
    copy = json.loads(json.dumps(root))
    for node in iter_nodes(copy):
        if node["t"] == "tensor":
            node["v"] = order.get(node["v"], node["v"])
    return json.dumps(copy, sort_keys=True)


def _tensor_keys(tree: Any) -> tuple[Node, list[str]]:
    """Encode a reader's tree; the keys of its tensors in order of appearance."""
    keys: list[str] = []

    def name_of(value: Any, path: str) -> str | None:
        if isinstance(value, TensorRef):
            keys.append(value.key)
            return str(len(keys) - 1)
        return None

    return TreeEncoder(name_of).encode(tree) or {"t": "none"}, keys


def _layout_problem(name: str, ph: Any, t: SourceTensor, storages: dict[str, str]) -> str | None:
    lay = t.layout
    if (ph.dtype, tuple(ph.shape)) != (lay.dtype, lay.shape):
        return f"{name}: dtype or shape differs"
    paired = storages.setdefault(lay.storage, ph.storage_key)
    if (tuple(ph.stride) != lay.stride or ph.storage_offset != lay.offset
            or paired != ph.storage_key):
        return f"{name}: storage sharing or layout differs"
    return None


def verify_pth(path: str, source: Source) -> list[str]:
    """Re-read the written ``.pth`` with the restricted zip reader (no torch, no pickle
    execution) and compare structure, storage sharing, layouts and bytes with ``source``."""
    from ckpttools.formats.torch_zip import TorchZipReader

    files = SourceFiles()
    try:
        with TorchZipReader(path) as reader:
            root, keys = _tensor_keys(reader.tree())
            expected = [n["v"] for n in iter_nodes(source.root) if n["t"] == "tensor"]
            if canonical(root, [str(i) for i in range(len(keys))]) != \
                    canonical(source.root, expected):
                return ["structure differs from the source"]
            return _compare_pth(reader, keys, expected, source, files)
    finally:
        files.close()


def _compare_pth(reader: Any, keys: list[str], expected: list[str], source: Source,
                 files: SourceFiles) -> list[str]:
    problems: list[str] = []
    storages: dict[str, str] = {}
    paired: dict[str, str] = {}
    for name, key in zip(expected, keys):
        t, ph = source.tensors[name], reader.placeholder(key)
        problem = _layout_problem(name, ph, t, storages)
        if problem is None and paired.setdefault(ph.storage_key, t.layout.storage) != \
                t.layout.storage:
            problem = f"{name}: storage sharing or layout differs"
        if problem is None and not _same_bytes(t, reader, key, files):
            problem = f"{name}: bytes differ from the source"
        if problem is not None:
            problems.append(problem)
        if len(problems) >= MAX_REPORTED:
            break
    return problems


def verify_output(path: str, target: str, source: Source, *, sharded: bool = False) -> list[str]:
    """Re-open a conversion's output at ``path`` and list how it differs from ``source``."""
    if target == "safetensors":
        return verify_safetensors(path, source, sharded=sharded)
    if target == "pth":
        return verify_pth(path, source)
    return verify_dcp(path, source)
