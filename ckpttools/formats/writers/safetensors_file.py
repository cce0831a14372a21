"""Writing safetensors files, single or sharded, one tensor at a time.

The header is built from metadata alone; then each tensor's bytes are copied in from their
source (a kernel copy for a raw byte range) so memory never holds more than one tensor that
needed materialising. Works without numpy (``safetensors.torch.save_file`` does not).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ckpttools.entries import RawSource
from ckpttools.errors import OutputError, UnsupportedError
from ckpttools.formats.writers.bytecopy import (Progress, SourceFiles, TensorData, _no_progress,
                                                plan_url_reads, write_data, write_data_crc)

ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
    "bool": "BOOL", "complex64": "C64",
}
TORCH_DTYPES = {v: k for k, v in ST_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"


def header_bytes(tensors: Sequence[TensorData], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and the JSON header (padded with spaces to 8 bytes) for ``tensors``.

    Raises:
        CkptError: a dtype safetensors cannot store (complex128 ...).
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        if t.dtype not in ST_DTYPES:
            raise UnsupportedError(f"{t.name}: dtype {t.dtype} has no safetensors encoding; "
                            "convert to pth or cast it first")
        header[t.name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(path: str, tensors: Sequence[TensorData], metadata: dict[str, str],
                      *, files: SourceFiles | None = None,
                      on_progress: Progress = _no_progress,
                      crcs: dict[str, int] | None = None) -> dict[str, RawSource]:
    """Write one safetensors file at ``path`` (no fsync; the caller's atomic_output does it).

    Args:
        path: file to create (truncated if present).
        tensors: in file order; names must be unique.
        metadata: ``__metadata__`` (string values).
        files: open source files to reuse.
        on_progress: called with the number of bytes written.
        crcs: when given, filled with the CRC-32 of each tensor's bytes as copied (the source's
            recorded CRC, else read by a worker thread from the page cache while the kernel
            copies), for verification.

    Returns:
        Where each tensor's bytes landed in ``path``.
    """
    own = files is None
    files = files or SourceFiles()
    head = header_bytes(tensors, metadata)
    plan_url_reads(tensors)
    placed: dict[str, RawSource] = {}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pool = ThreadPoolExecutor(1, thread_name_prefix="crc32") if crcs is not None else None
    try:
        os.write(fd, head)
        pos = len(head)
        for t in tensors:
            if crcs is not None and pool is not None:
                crcs[t.name] = write_data_crc(files, t, fd, pool, on_progress=on_progress)
            else:
                write_data(files, t, fd, on_progress=on_progress)
            placed[t.name] = RawSource(path, pos, t.nbytes)
            pos += t.nbytes
        if os.lseek(fd, 0, os.SEEK_CUR) != pos:
            raise OutputError(f"{path}: wrote {os.lseek(fd, 0, os.SEEK_CUR)} bytes, expected {pos}")
    finally:
        if pool is not None:
            pool.shutdown()
        os.close(fd)
        if own:
            files.close()
    return placed


@dataclass(frozen=True)
class ShardPlan:
    """Which tensors go to which shard file."""

    names: tuple[str, ...]
    shards: tuple[tuple[TensorData, ...], ...]


def plan_shards(tensors: Sequence[TensorData], max_shard_size: int,
                stem: str = "model") -> ShardPlan:
    """Split tensors in order into shards of at most ``max_shard_size`` bytes.

    A tensor larger than the limit gets a shard of its own, as transformers does.
    """
    shards: list[list[TensorData]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    n = len(shards)
    names = tuple(f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1))
    return ShardPlan(names, tuple(tuple(s) for s in shards))


def write_sharded(folder: str, tensors: Sequence[TensorData], metadata: dict[str, str],
                  max_shard_size: int, *, index_metadata: dict[str, str] | None = None,
                  on_progress: Progress = _no_progress,
                  crcs: dict[str, int] | None = None) -> dict[str, RawSource]:
    """Write a sharded set and its ``model.safetensors.index.json`` into ``folder``.

    The index has ``metadata.total_size`` and ``weight_map`` as transformers and huggingface_hub
    read it; ``metadata`` goes into every shard's ``__metadata__``, ``index_metadata`` into the
    index's ``metadata`` next to ``total_size``. ``crcs`` as for ``write_safetensors``.

    Returns:
        Where each tensor's bytes landed.
    """
    plan = plan_shards(tensors, max_shard_size)
    files = SourceFiles()
    placed: dict[str, RawSource] = {}
    weight_map: dict[str, str] = {}
    try:
        for name, shard in zip(plan.names, plan.shards):
            placed.update(write_safetensors(os.path.join(folder, name), shard, metadata,
                                            files=files, on_progress=on_progress,
                                            crcs=crcs))
            weight_map.update({t.name: name for t in shard})
    finally:
        files.close()
    index = {"metadata": {**(index_metadata or {}),
                          "total_size": sum(t.nbytes for t in tensors)},
             "weight_map": weight_map}
    with open(os.path.join(folder, INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False)
    return placed
