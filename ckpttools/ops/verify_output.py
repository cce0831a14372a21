"""Re-reading a conversion's output and comparing it with its source.

Tensors are compared bit for bit (after the requested cast): byte ranges chunk by chunk when
both sides have them, else one loaded tensor at a time. Structure is compared as encoded
manifest trees, so int vs str keys, tuple vs list and numpy values count.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckpttools.entries import RawSource
from ckpttools.formats.bytecopy import SourceFiles, ranges_equal
from ckpttools.formats.manifest import MANIFEST_KEY, Manifest, Node, TreeEncoder, iter_nodes
from ckpttools.ops.convert_source import Source, SourceTensor

MAX_REPORTED = 20


def same_bits(a: Any, b: Any) -> bool:
    """Whether two tensors have the same dtype, shape and bytes."""
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


def _header(path: str) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return 8 + n, json.loads(f.read(n))


def _own_bytes(t: SourceTensor) -> RawSource | None:
    from ckpttools.ops.convert import tensor_data

    return tensor_data(t).raw


def _check_file(path: str, names: list[str], source: Source, files: SourceFiles) -> list[str]:
    from safetensors import safe_open

    from ckpttools.formats.safetensors_writer import ST_DTYPES

    problems: list[str] = []
    start, header = _header(path)
    with safe_open(path, framework="pt") as f:  # the real library must accept the file
        present = set(f.keys())
        for name in names:
            t, entry = source.tensors[name], header.get(name)
            if name not in present or entry is None:
                problems.append(f"{name}: missing from {os.path.basename(path)}")
                continue
            if entry["dtype"] != ST_DTYPES[t.layout.dtype] or \
                    tuple(entry["shape"]) != t.layout.shape:
                problems.append(f"{name}: dtype or shape differs")
                continue
            b, e = entry["data_offsets"]
            raw = _own_bytes(t)
            if raw is not None:
                same = ranges_equal(files, raw, RawSource(path, start + b, e - b))
            else:
                same = same_bits(f.get_tensor(name), t.load().contiguous())
            if not same:
                problems.append(f"{name}: bytes differ from the source")
    return problems


def verify_safetensors(path: str, source: Source, *, sharded: bool) -> list[str]:
    """Compare a safetensors file or sharded folder with ``source``."""
    from ckpttools.ops.convert import output_manifest

    if sharded:
        from ckpttools.formats.safetensors_writer import INDEX_NAME

        with open(os.path.join(path, INDEX_NAME), encoding="utf-8") as f:
            index = json.load(f)
        text = index["metadata"].get(MANIFEST_KEY)
        by_file: dict[str, list[str]] = {}
        for name, file in index["weight_map"].items():
            by_file.setdefault(os.path.join(path, file), []).append(name)
    else:
        text = _header(path)[1].get("__metadata__", {}).get(MANIFEST_KEY)
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


def canonical(root: Node, names: list[str]) -> str:
    """The tree as JSON with tensor names replaced by their order of appearance."""
    order = {n: i for i, n in enumerate(names)}
    copy = json.loads(json.dumps(root))
    for node in iter_nodes(copy):
        if node["t"] == "tensor":
            node["v"] = order.get(node["v"], node["v"])
    return json.dumps(copy, sort_keys=True)


def _numpy_globals(root: Node) -> list[Any]:
    dtypes = {n["dtype"] for n in iter_nodes(root) if n["t"] in ("ndarray", "npscalar")}
    if not dtypes:
        return []
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *{type(np.dtype(d)) for d in dtypes}]


def verify_pth(path: str, source: Source) -> list[str]:
    """Load the written ``.pth`` with ``torch.load(weights_only=True, mmap=True)`` and compare."""
    import torch

    with torch.serialization.safe_globals(_numpy_globals(source.root)):
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    loaded: list[Any] = []

    def name_of(value: Any, p: str) -> str | None:
        if isinstance(value, torch.Tensor):
            loaded.append(value)
            return str(len(loaded) - 1)
        return None

    root = TreeEncoder(name_of).encode(obj) or {"t": "none"}
    expected = [n["v"] for n in iter_nodes(source.root) if n["t"] == "tensor"]
    problems = []
    if canonical(root, [str(i) for i in range(len(loaded))]) != canonical(source.root, expected):
        problems.append("structure differs from the source")
        return problems
    storages: dict[str, int] = {}
    for name, got in zip(expected, loaded):
        t = source.tensors[name]
        lay = t.layout
        sid = storages.setdefault(lay.storage, got.untyped_storage().data_ptr())
        if (tuple(got.stride()) != lay.stride or got.storage_offset() != lay.offset
                or got.untyped_storage().data_ptr() != sid):
            problems.append(f"{name}: storage sharing or layout differs")
        elif not same_bits(got, t.load()):
            problems.append(f"{name}: bytes differ from the source")
        if len(problems) >= MAX_REPORTED:
            break
    return problems


def verify_output(path: str, target: str, source: Source, *, sharded: bool = False) -> list[str]:
    """Re-open a conversion's output at ``path`` and list how it differs from ``source``."""
    if target == "safetensors":
        return verify_safetensors(path, source, sharded=sharded)
    if target == "pth":
        return verify_pth(path, source)
    from ckpttools.formats.dcp_writer import verify_dcp

    return verify_dcp(path, source)
