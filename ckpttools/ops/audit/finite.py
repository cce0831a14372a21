"""The audit's NaN/Inf check: one ``torch.aminmax`` pass per tensor (NaN propagates to both
ends, Inf shows as an end), counting NaN and Inf only in tensors that fail it.

Tensors whose bytes are one contiguous range of a local file are checked in 32 MB windows of it,
each mapped on its own (``MAP_POPULATE``: the page cache's pages, no copy) on a helper thread
while the window before is checked, and unmapped once checked, so memory stays at two windows
whatever the file size (a map of the whole file would leave every page it touched resident).
Over a URL the windows are read into two reused buffers instead. Other tensors come from
``reader.load`` one at a time.

Given the ``RecordCrcs`` of a zip (``audit``), a tensor whose bytes are a whole record also has
that record's CRC-32 computed here, slice by slice, each slice CRC'd and checked while it is in
the CPU's cache: the integrity check then needs no second pass over those bytes.
"""

from __future__ import annotations

import math
import mmap
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any

from ckpttools.entries import tensor_dtypes_inside
from ckpttools.formats import fileio
from ckpttools.ops.audit.checks import CheckResult
from ckpttools.ops.tensor_stats import one_thread
from ckpttools.units import plural

if TYPE_CHECKING:
    import torch

    from ckpttools.formats.base import CheckpointReader
    from ckpttools.ops.audit.record_crcs import RecordCrcs

CHUNK_BYTES = 32 << 20
SLICE_BYTES = 4 << 20  # a window CRC'd and checked this much at a time (a multiple of any itemsize)
CHECKED_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "complex64",
                            "complex128", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                            "float8_e5m2fnuz"})


def _counts(t: torch.Tensor) -> tuple[int, int]:
    """(NaN, Inf) counts of a chunk, or (0, 0) after the fast min/max pass says it is finite."""
    import torch

    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype.itemsize == 1:  # float8: no aminmax kernel
        t = t.float()
    if t.numel() == 0:
        return 0, 0
    lo, hi = torch.aminmax(t.reshape(-1))
    if math.isfinite(float(lo)) and math.isfinite(float(hi)):
        return 0, 0
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def _raw_chunks(f: IO[bytes], offset: int, length: int, itemsize: int,
                pool: ThreadPoolExecutor, bufs: list[bytearray]) -> Iterator[memoryview]:
    """The range in chunks, each read ahead on ``pool`` into alternating buffers."""
    step = max(itemsize, CHUNK_BYTES - CHUNK_BYTES % itemsize)
    spans = [(offset + i, min(step, length - i)) for i in range(0, length, step)]

    def read(i: int) -> memoryview:
        at, n = spans[i]
        view = memoryview(bufs[i % 2])[:n]
        f.seek(at)
        got = f.readinto(view)
        if got != n:
            raise EOFError(f"file ends {n - (got or 0)} bytes early")
        return view

    pending = pool.submit(read, 0) if spans else None
    for i in range(len(spans)):
        assert pending is not None
        view = pending.result()
        pending = pool.submit(read, i + 1) if i + 1 < len(spans) else None
        yield view


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: the pages mapped at once, not per fault


def _map_window(f: IO[bytes], at: int, n: int) -> tuple[mmap.mmap, int]:
    """``(map, start of the range in it)`` of the file's bytes ``at .. at + n``."""
    base = at - at % mmap.ALLOCATIONGRANULARITY
    try:  # mmap refuses a window past the end of the file (no SIGBUS later)
        m = mmap.mmap(f.fileno(), n + at - base, flags=mmap.MAP_SHARED | _POPULATE,
                      prot=mmap.PROT_READ, offset=base)
    except ValueError as e:
        raise EOFError(f"file ends inside a tensor's data ({e})") from e
    return m, at - base


def _check_window(m: mmap.mmap, start: int, n: int, dtype: Any,
                  crc: int | None) -> tuple[int, int, int | None]:
    """(NaN, Inf, CRC-32 continued from ``crc``) of ``n`` mapped bytes from ``start``; without
    a CRC, one check of the whole window."""
    import torch

    from ckpttools.formats.writers.bytecopy import crc32

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only map warns; it is never written
        t = torch.frombuffer(m, dtype=dtype, count=n // dtype.itemsize, offset=start)
    if crc is None:
        nan, inf = _counts(t)
        del t  # nothing may view the map when it is closed
        return nan, inf, None
    nan = inf = 0
    step = SLICE_BYTES // dtype.itemsize
    view, part = memoryview(m), t
    try:
        for i in range(0, t.numel(), step):
            part = t[i:i + step]
            at = start + i * dtype.itemsize
            crc = crc32(view[at:at + part.numel() * dtype.itemsize], crc)
            a, b = _counts(part)
            nan, inf = nan + a, inf + b
    finally:
        del t, part  # nothing may view the map when it is closed
        view.release()
    return nan, inf, crc


def _check_mapped(f: IO[bytes], offset: int, length: int, dtype: Any,
                  pool: ThreadPoolExecutor, crc: int | None = None) -> tuple[int, int, int | None]:
    """``_check_raw`` of a local file: each window mapped ahead on ``pool`` (the mmap call
    releases the GIL) while the one before is checked, and unmapped once checked. With ``crc``
    (0 to start), also the CRC-32 of the range."""
    step = max(dtype.itemsize, CHUNK_BYTES - CHUNK_BYTES % dtype.itemsize)
    spans = [(offset + i, min(step, length - i)) for i in range(0, length, step)]
    nan = inf = 0
    pending = pool.submit(_map_window, f, *spans[0]) if spans else None
    for i, (_, n) in enumerate(spans):
        assert pending is not None
        m, start = pending.result()
        pending = pool.submit(_map_window, f, *spans[i + 1]) if i + 1 < len(spans) else None
        try:
            a, b, crc = _check_window(m, start, n, dtype, crc)
            nan, inf = nan + a, inf + b
        except BaseException:
            if pending is not None:  # the window mapped ahead will not be checked
                pending.cancel() or pending.result()[0].close()
            raise
        finally:
            try:
                m.close()
            except BufferError:  # an error left a view of it: it is unmapped when freed
                pass
    return nan, inf, crc


def _check_raw(path: str, files: dict[str, IO[bytes]], offset: int, length: int, dtype: Any,
               pool: ThreadPoolExecutor, bufs: list[bytearray],
               crcs: RecordCrcs | None = None) -> tuple[int, int]:
    import torch

    from ckpttools.entries import RawSource

    if path not in files:
        files[path] = fileio.open_binary(path)
    if not fileio.is_remote_file(files[path]):
        # a tensor that is a whole record of the zip: its CRC-32 is checked on the same reads
        want = crcs is not None and crcs.expected(RawSource(path, offset, length)) is not None
        try:
            nan, inf, crc = _check_mapped(files[path], offset, length, dtype, pool,
                                          0 if want else None)
        except OSError:  # a file system that cannot map files: read the range instead
            pass
        else:
            if crcs is not None and crc is not None:
                crcs.settle(offset, crc)
            return nan, inf
    if not bufs:  # allocated on first use: zero-filling 64 MB costs more than a small check
        bufs += [bytearray(CHUNK_BYTES), bytearray(CHUNK_BYTES)]
    nan = inf = 0
    for view in _raw_chunks(files[path], offset, length, dtype.itemsize, pool, bufs):
        a, b = _counts(torch.frombuffer(view, dtype=dtype))
        nan, inf = nan + a, inf + b
    return nan, inf


def _checked(key: str, only: str | None, exclude: tuple[str, ...]) -> bool:
    def under(prefix: str) -> bool:
        return key == prefix or key.startswith(prefix + ".")

    return (only is None or under(only)) and not any(under(p) for p in exclude)


def _unchecked(reader: CheckpointReader, only: str | None, exclude: tuple[str, ...]) -> list[str]:
    """Objects (sparse, nested tensors) whose floating values this pass cannot read, and meta
    tensors, saved without values, as details."""
    meta = [f"{e.key}: not checked (a meta tensor: saved without data)"
            for e in reader.tensor_entries()
            if e.device == "meta" and e.dtype in CHECKED_DTYPES and _checked(e.key, only, exclude)]
    return meta + [f"{e.key}: not checked (values inside {e.type_name})"
                   for e in reader.object_entries()
                   if _checked(e.key, only, exclude) and tensor_dtypes_inside(e.value) & CHECKED_DTYPES]


def check_finite(reader: CheckpointReader, *, allow_nonfinite: bool = False,
                 on_progress: Callable[[int], None] | None = None, only: str | None = None,
                 exclude: tuple[str, ...] = (), record_crcs: RecordCrcs | None = None) -> CheckResult:
    """Count NaN/Inf in every floating tensor, streaming one chunk at a time.

    Args:
        reader: an open checkpoint.
        allow_nonfinite: report non-finite tensors as WARN instead of FAIL.
        on_progress: called with the bytes of each tensor checked.
        only: check only the tensors under this dotted key (``--key``).
        exclude: keys of trainer bookkeeping (Lightning ``callbacks``) whose values, such as
            ``kth_value = inf``, are not tensor findings.
        record_crcs: the zip records whose CRC-32 is still to be checked; a record whose bytes
            are one tensor's is checked on this pass's reads and settled in it.
    """
    import torch

    bad: list[str] = []
    count = 0
    files: dict[str, IO[bytes]] = {}
    bufs: list[bytearray] = []  # the read buffers of files that cannot be mapped (URLs)
    checked = [e for e in reader.tensor_entries() if e.dtype in CHECKED_DTYPES
               and e.device != "meta" and _checked(e.key, only, exclude)]
    fileio.plan_value_reads(reader, [e.key for e in checked])  # a URL: a window of ranges in flight
    try:
        # the reads run on the pool's thread, the checks on this one: one torch thread each
        with ThreadPoolExecutor(1) as pool, one_thread():
            for e in checked:
                count += 1
                dtype = getattr(torch, e.dtype)
                src = reader.raw_source(e.key) if sys.byteorder == "little" else None
                if src is not None:
                    nan, inf = _check_raw(src.path, files, src.offset, src.length, dtype, pool, bufs,
                                          record_crcs)
                else:
                    nan, inf = _counts(reader.load(e.key))
                if nan or inf:
                    bad.append(f"{e.key}: {nan} NaN, {inf} Inf of {e.numel}")
                if on_progress is not None:
                    on_progress(e.nbytes)
    finally:
        for f in files.values():
            f.close()
    skipped = f"; not checked: {', '.join(exclude)} (trainer bookkeeping)" if exclude else ""
    # a sparse or nested tensor's values sit inside a record this pass does not rebuild: it
    # cannot tell whether they are finite, so it says so rather than "all finite"
    unchecked = _unchecked(reader, only, exclude)
    if unchecked:
        first = unchecked[0].split(":", 1)[0]
        skipped += (f"; cannot tell: {plural(len(unchecked), 'meta, sparse or nested tensor')} not "
                    f"checked (first: {first})")
    if not bad:
        return CheckResult(reader.path, "finite", "WARN" if unchecked else "PASS",
                           f"{plural(count, 'floating tensor')}, all finite{skipped}",
                           tuple(unchecked))
    status = "WARN" if allow_nonfinite else "FAIL"
    return CheckResult(reader.path, "finite", status,
                       f"{len(bad)} of {count} tensors hold NaN/Inf (first: {bad[0]}){skipped}",
                       tuple(bad + unchecked))
