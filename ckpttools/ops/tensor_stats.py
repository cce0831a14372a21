"""Per-tensor statistics (min, max, mean, std, NaN and Inf counts), one tensor at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.formats import fileio
from ckpttools.formats.base import CheckpointReader

if TYPE_CHECKING:
    import torch

# Elements per chunk: bounds the float64 working copy to 32 MiB whatever the tensor's size.
CHUNK = 1 << 22


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's element-wise passes on the calling thread only, restoring the count after.

    The passes over a streamed chunk are memory-bound, so a second thread gains little on an
    idle machine, while on a busy one every pass waits at a barrier for a descheduled thread
    (measured: 5x the CPU time and 4x the wall time of one thread on a shared 2-core host).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor. ``min``..``std`` cover finite values only and are None for
    tensors without any (or of a non-numeric dtype); every field is None for a meta tensor,
    which holds no data to count."""

    key: str
    numel: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nan: int | None
    inf: int | None

    @property
    def is_finite(self) -> bool:
        return self.nan == 0 and self.inf == 0

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "numel": self.numel, "min": self.min, "max": self.max,
                "mean": self.mean, "std": self.std, "nan": self.nan, "inf": self.inf}


def _stats_of(key: str, tensor: torch.Tensor) -> TensorStats:
    import torch

    if tensor.is_meta:  # saved from a meta-device model: no values, nothing to count
        return TensorStats(key, tensor.numel(), None, None, None, None, None, None)
    flat = tensor.reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    integral = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)
    if not (flat.is_floating_point() or flat.dtype in integral):
        return TensorStats(key, tensor.numel(), None, None, None, None, 0, 0)
    count = total = squares = 0.0
    lo, hi = math.inf, -math.inf
    nan = inf = 0
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start:start + CHUNK].to(torch.float64)
        finite = torch.isfinite(chunk)
        nan += int(torch.isnan(chunk).sum())
        inf += int(torch.isinf(chunk).sum())
        values = chunk[finite] if nan or inf else chunk
        if values.numel():
            count += values.numel()
            total += float(values.sum())
            squares += float((values * values).sum())
            lo = min(lo, float(values.min()))
            hi = max(hi, float(values.max()))
    if not count:
        return TensorStats(key, tensor.numel(), None, None, None, None, nan, inf)
    mean = total / count
    std = math.sqrt(max(squares / count - mean * mean, 0.0))
    return TensorStats(key, tensor.numel(), lo, hi, mean, std, nan, inf)


def compute_stats(
    reader: CheckpointReader,
    keys: Sequence[str],
    *,
    on_progress: Callable[[int], None] | None = None,
    shown_keys: Sequence[str] | None = None,
) -> tuple[TensorStats, ...]:
    """Statistics for each of ``keys``, loading one tensor at a time from ``reader``.

    Args:
        reader: an open checkpoint.
        keys: full dotted keys of the tensors.
        on_progress: called with each tensor's byte size once it is done.
        shown_keys: names to report the statistics under (defaults to ``keys``).
    """
    out = []
    names = shown_keys if shown_keys is not None else keys
    fileio.plan_value_reads(reader, keys)  # a URL: a window of ranges in flight
    for key, name in zip(keys, names):
        tensor = reader.load(key)
        out.append(_stats_of(name, tensor))
        if on_progress is not None:
            on_progress(0 if tensor.is_meta else tensor.numel() * tensor.element_size())
        del tensor
    return tuple(out)
