"""``convert``: lossless, streaming, verified conversion between .pth, safetensors and DCP.

Tensors are written one at a time (a kernel copy of their byte range where the source has one,
else one materialised tensor); the non-tensor structure travels in the ckpttools manifest
(see ``ckpttools.formats.manifest``). The output is written beside the destination, verified,
then renamed into place.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ckpttools.errors import InvalidArgumentError, OutputError
from ckpttools.formats.writers.atomic import atomic_output, check_destination
from ckpttools.formats.writers.bytecopy import Progress, _no_progress
from ckpttools.formats.manifest import MANIFEST_KEY, dtype_size
from ckpttools.ops.convert.source import Source, SourceTensor, output_manifest, tensor_data

TARGETS = ("pth", "safetensors", "dcp")
CAST_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
              "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
FLOATING = ("float64", "float32", "float16", "bfloat16")
_EXTENSIONS = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth", ".bin": "pth",
               ".ckpt": "pth", ".tar": "pth"}


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion did.

    Attributes:
        source, destination: paths as given.
        target: ``pth``, ``safetensors`` or ``dcp``.
        files: files written, relative to the destination (shards, index, ...).
        tensors: number of tensors written; nbytes: their bytes.
        cast: keys of tensors cast to ``dtype``.
        dropped: keys of values left out (``--drop-unrepresentable``).
        verified: whether the output was re-read and compared.
        mismatches: what verification found different (empty when ok); the first names the
            path where the object graphs differ.
        member: the file of a model folder that was converted (its model weights).
        others: the folder's other checkpoint files (``--key <name>`` converts one).
        copied: non-checkpoint files copied into a folder output (``config.json`` ...).
    """

    source: str
    destination: str
    target: str
    files: tuple[str, ...]
    tensors: int
    nbytes: int
    dtype: str | None = None
    cast: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    verified: bool = False
    mismatches: tuple[str, ...] = field(default=())
    member: str | None = None
    others: tuple[str, ...] = ()
    copied: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "target": self.target,
                "files": list(self.files), "tensors": self.tensors, "bytes": self.nbytes,
                "dtype": self.dtype, "cast": list(self.cast), "dropped": list(self.dropped),
                "verified": self.verified, "mismatches": list(self.mismatches),
                "member": self.member, "others": list(self.others), "copied": list(self.copied),
                "ok": self.ok}


class _VerificationFailed(Exception):
    def __init__(self, mismatches: list[str]) -> None:
        super().__init__("; ".join(mismatches[:3]))
        self.mismatches = mismatches


def parse_size(text: str) -> int:
    """``2GB``, ``500MB``, ``1GiB``, ``123`` -> bytes (decimal units, as transformers uses).

    Raises:
        CkptError: not a size.
    """
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    try:
        value = int(float(num) * units[s[len(num):]])
    except (ValueError, KeyError) as e:
        raise InvalidArgumentError(f"{text}: not a size; write it like 2GB or 500MB") from e
    if value <= 0:
        raise InvalidArgumentError(f"{text}: the shard size must be positive")
    return value


def target_for(dest: str, to: str | None, sharded: bool) -> str:
    """The output format: ``to`` if given, else from the destination's extension.

    Raises:
        CkptError: the format cannot be told, or sharding was asked for a single-file format.
    """
    target = to or _EXTENSIONS.get(os.path.splitext(dest)[1].lower())
    if target is None and sharded:  # only safetensors shards: a folder name needs no --to
        target = "safetensors"
    if target is None:
        raise InvalidArgumentError(f"{dest}: cannot tell the output format from the name; "
                        "pass --to pth|safetensors|dcp")
    if target not in TARGETS:
        raise InvalidArgumentError(f"{target}: unknown output format; use pth, safetensors or dcp")
    if sharded and target != "safetensors":
        raise InvalidArgumentError(f"{dest}: --max-shard-size needs --to safetensors")
    return target


def cast_source(source: Source, dtype: str | None) -> tuple[Source, tuple[str, ...]]:
    """Cast floating tensors to ``dtype`` (layouts only; bytes are cast when written)."""
    if dtype is None:
        return source, ()
    cast: list[str] = []
    tensors: dict[str, SourceTensor] = {}
    for name, t in source.tensors.items():
        lay = t.layout
        if lay.dtype in FLOATING and lay.dtype != dtype and not _is_step_counter(name, lay.shape):
            scaled = lay.storage_nbytes // dtype_size(lay.dtype) * dtype_size(dtype)
            t = SourceTensor(name, replace(lay, dtype=dtype, storage_nbytes=scaled), None,
                             _cast_loader(t.load, dtype))
            cast.append(name)
        tensors[name] = t
    return replace(source, tensors=tensors), tuple(cast)


def _is_step_counter(name: str, shape: tuple[int, ...]) -> bool:
    """An optimizer's ``step`` (a 0-dim float32 tensor torch adds 1 to each step): cast to
    bfloat16 it is inexact past 256 and stops counting, so a resume's bias correction drifts."""
    return not shape and name.rpartition(".")[2] == "step"


def _cast_loader(load: Callable[[], Any], dtype: str) -> Callable[[], Any]:
    def cast() -> Any:
        import torch

        return load().to(getattr(torch, dtype))

    return cast


def _check_space(dest: str, need: int) -> None:
    parent = os.path.dirname(os.path.abspath(dest))
    free = shutil.disk_usage(parent).free
    if free < need + (16 << 20):
        from ckpttools.units import human_bytes

        raise OutputError(f"{dest}: not enough free disk space ({human_bytes(free)} free, "
                        f"{human_bytes(need)} needed); free space or write elsewhere")


def write_output(tmp: str, target: str, source: Source, *, max_shard_size: int | None,
                 on_progress: Progress, crcs: dict[str, int] | None = None) -> tuple[str, ...]:
    """Write ``source`` in ``target`` format at ``tmp``; returns the files written.

    ``crcs``, when given, gets the CRC-32 of every tensor (storage, for pth) copied from a
    source byte range, computed while copying; verification compares the output with them.
    """
    manifest = output_manifest(source).to_json()
    data = [tensor_data(t) for t in source.tensors.values()]
    user = dict(source.metadata)
    if user and target != "safetensors":
        warnings.warn(f"the source's safetensors metadata ({', '.join(user)}) is not carried "
                      f"over: a {target} output has no place for it", stacklevel=2)
    written: dict[str, int] | None = {} if crcs is not None else None
    if target == "pth":
        from ckpttools.ops.convert.to_pth import write_pth

        write_pth(tmp, source, on_progress=on_progress, crcs=crcs)
        return (os.path.basename(tmp),)
    if target == "safetensors" and max_shard_size is None:
        from ckpttools.formats.writers.safetensors_file import write_safetensors

        write_safetensors(tmp, data, {"format": "pt", **user, MANIFEST_KEY: manifest},
                          on_progress=on_progress, crcs=written)
        files: tuple[str, ...] = (os.path.basename(tmp),)
    elif target == "safetensors":
        from ckpttools.formats.writers.safetensors_file import write_sharded

        write_sharded(tmp, data, {"format": "pt", **user}, max_shard_size or 0,
                      index_metadata={MANIFEST_KEY: manifest}, on_progress=on_progress,
                      crcs=written)
        files = tuple(sorted(os.listdir(tmp)))
    else:
        from ckpttools.formats.writers.dcp import write_dcp
        from ckpttools.ops.convert.dcp_values import dcp_values

        write_dcp(tmp, data, manifest, on_progress=on_progress, crcs=written,
                  values=dcp_values(source.root, {*source.tensors, MANIFEST_KEY}))
        files = tuple(sorted(os.listdir(tmp)))
    if crcs is not None and written is not None:
        crcs.update((d.name, written[d.name]) for d in data if d.raw is not None or d.pieces)
    return files


def convert_source(source: Source, src: str, dest: str, *, to: str | None = None,
                   dtype: str | None = None, max_shard_size: int | None = None,
                   verify: bool = True, force: bool = False,
                   on_progress: Progress = _no_progress,
                   add_files: Callable[[str], list[str]] | None = None) -> ConvertResult:
    """Write an opened ``Source`` to ``dest`` atomically, verified unless ``verify`` is false.

    ``add_files`` is called with the temporary output folder (folder outputs only) to copy
    files beside the tensors; it returns their names.
    """
    target = target_for(dest, to, max_shard_size is not None)
    directory = target == "dcp" or max_shard_size is not None
    check_destination(src, dest, force=force)
    source, cast = cast_source(source, CAST_NAMES[dtype] if dtype else None)
    _check_space(dest, source.nbytes)
    result = ConvertResult(src, dest, target, (), len(source.tensors), source.nbytes,
                           CAST_NAMES.get(dtype or ""), cast, source.dropped, verify)
    try:
        with atomic_output(dest, directory=directory) as tmp:
            crcs: dict[str, int] = {}
            files = write_output(tmp, target, source, max_shard_size=max_shard_size,
                                 on_progress=on_progress, crcs=crcs if verify else None)
            copied = tuple(add_files(tmp)) if add_files and directory else ()
            if verify:
                from ckpttools.ops.convert.verify import verify_output

                problems = verify_output(tmp, target, source, sharded=directory, crcs=crcs)
                if problems:
                    raise _VerificationFailed(problems)
    except _VerificationFailed as e:
        return replace(result, mismatches=tuple(e.mismatches))
    return replace(result, files=tuple(sorted(files + copied)) if directory
                   else (os.path.basename(dest),), copied=copied)


def convert_checkpoint(src: str, dest: str, *, to: str | None = None, key: str | None = None,
                       dtype: str | None = None, max_shard_size: int | str | None = None,
                       verify: bool = True, force: bool = False, trust: bool = False,
                       drop_unrepresentable: bool = False,
                       on_progress: Progress = _no_progress) -> ConvertResult:
    """Convert a checkpoint between .pth, safetensors (single or sharded) and DCP, losslessly.

    Args:
        src: a checkpoint file or folder of any format ckpttools reads.
        dest: the file (or folder, for sharded safetensors and DCP) to write.
        to: ``pth``, ``safetensors`` or ``dcp``; from ``dest``'s extension when None.
        key: convert only the subtree at this dotted path (a state_dict inside a checkpoint).
        dtype: ``bf16``, ``fp16`` or ``fp32``: cast floating tensors.
        max_shard_size: write a sharded safetensors set with shards of at most this size.
        verify: re-read the output and compare it with the source.
        force: overwrite an existing destination.
        trust: allow full unpickling of the source (code execution).
        drop_unrepresentable: leave out values that need pickle instead of failing.
        on_progress: called with the number of bytes written.

    Returns:
        A ``ConvertResult``; ``ok`` is false when verification found a difference (the output
        was then removed).

    Raises:
        CkptError: unreadable source, unrepresentable value, bad destination, no disk space.

    Example:
        >>> convert_checkpoint("ckpt.pth", "ckpt.safetensors").tensors
        12
    """
    from ckpttools.ops.convert.folders import copy_side_files, plan_source, warn_stale_config
    from ckpttools.ops.convert.source import open_source, select_key

    if isinstance(max_shard_size, str):
        max_shard_size = parse_size(max_shard_size)
    if dtype is not None and dtype not in CAST_NAMES:
        raise InvalidArgumentError(f"{dtype}: unknown dtype; use bf16, fp16 or fp32")
    plan = plan_source(src, key)
    cast = CAST_NAMES[dtype] if dtype else None
    if target_for(dest, to, max_shard_size is not None) != "dcp" and max_shard_size is None:
        warn_stale_config(src, plan, cast)
    with open_source(plan.open_path, trust=trust, drop=drop_unrepresentable) as source:
        if plan.key:
            source = select_key(source, plan.key)
        result = convert_source(source, src, dest, to=to, dtype=dtype,
                                max_shard_size=max_shard_size, verify=verify, force=force,
                                on_progress=on_progress,
                                add_files=lambda out: copy_side_files(src, out, plan, cast))
    return replace(result, member=plan.member, others=plan.others)
