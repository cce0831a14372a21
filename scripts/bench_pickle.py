"""Listing a torch.save checkpoint with ckpttools vs torch.load(mmap=True, weights_only=True)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def _best(fn: object, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def run(sizes: list[str]) -> None:
    """``sizes`` are tensor counts (``"1000"``, ``"20000"``)."""
    import torch

    from ckpttools.formats.torch_zip import TorchZipReader

    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            n = int(size)
            path = Path(tmp) / f"{n}.pth"
            torch.save({f"layers.{i}.weight": torch.zeros(4, 4) for i in range(n)}, path)
            ours = _best(lambda: TorchZipReader(path).entries())
            theirs = _best(lambda: torch.load(path, mmap=True, weights_only=True))
            print(f"pickle listing, {n} tensors: ckpttools {ours * 1000:.0f} ms, "
                  f"torch.load(mmap) {theirs * 1000:.0f} ms, ratio {theirs / ours:.1f}x")


if __name__ == "__main__":
    run(["1000", "20000"])
