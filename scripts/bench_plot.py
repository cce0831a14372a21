"""Benchmark ``diff A B --plot``: the layer-change chart costs next to nothing over ``diff A B``.

The relative L2 change per tensor is measured while ``diff`` streams the pairs (the same chunks,
one tensor at a time); the chart is drawn from the result. Target (#19): within 1.2x the time
and the peak memory of ``diff A B`` on two 1 GB checkpoints. Two pairs:

1. values differ everywhere (two independently initialised checkpoints, as in ``bench diff``);
2. a fine-tuned copy: four blocks and the norm changed, the rest bitwise equal (the equal chunks
   still count toward ``||A||``, so this is where the measurement costs most).

Usage: python scripts/bench.py plot --sizes 1GB     (the target; ~3 GB of disk)
       python scripts/bench.py plot                 (256MB)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import DATA, checkpoint, ckpttools_cmd, measure, parse_size, transformer_state  # noqa: E402

TUNED_BLOCKS = (0, 3, 6, 9)


def _tuned(first: Path) -> dict:
    import torch

    state = torch.load(first, mmap=True, weights_only=True)
    out = {k: v.clone() if k.startswith(tuple(f"layers.{i}." for i in TUNED_BLOCKS)) or k == "norm.weight"
           else v for k, v in state.items()}
    gen = torch.Generator().manual_seed(0)
    for key, value in out.items():
        if value is not state[key]:
            value.add_(torch.randn(value.shape, generator=gen), alpha=1e-3 * (1 + hash(key) % 7))
    return out


def run(sizes: list[str]) -> None:
    """Print wall time and peak RSS of ``diff A B`` with and without ``--plot``, and the ratios."""
    for size in sizes:
        total = parse_size(size)
        first = checkpoint(f"diff-first-{size}", lambda: transformer_state(total), "pth")
        other = checkpoint(f"diff-other-{size}", lambda: transformer_state(total), "pth")
        tuned = checkpoint(f"plot-tuned-{size}", lambda: _tuned(first), "pth")
        for label, b in (("values differ everywhere", other), ("fine-tuned copy, 4 blocks changed", tuned)):
            with tempfile.TemporaryDirectory() as tmp:
                plain = measure(ckpttools_cmd("diff", str(first), str(b)), repeat=5, ok_codes=(1,))
                plotted = measure(ckpttools_cmd("diff", str(first), str(b), "--plot",
                                                str(Path(tmp) / "changes.png")), repeat=5, ok_codes=(1,))
            print(f"diff A B --plot, two {size} checkpoints ({label})")
            print(f"  ckpttools diff A B                {plain}")
            print(f"  ckpttools diff A B --plot x.png   {plotted}")
            print(f"  ratio: {plotted.wall / plain.wall:.2f}x the time ({plotted.cpu / plain.cpu:.2f}x "
                  f"the CPU time), {plotted.rss_mb / plain.rss_mb:.2f}x the memory (target: within 1.2x)",
                  flush=True)
    print(f"(checkpoints kept in {DATA})")


if __name__ == "__main__":
    run(sys.argv[1:] or ["1GB"])
