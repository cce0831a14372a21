"""formats: listing a safetensors file with ckpttools' header reader vs safetensors' safe_open.

Both run as fresh processes (import cost included), on a 20,000-tensor file and on transformer
files of the given sizes. The in-process time of ``entries()`` alone is printed too.
"""

from __future__ import annotations

import subprocess
import sys

from benchlib import checkpoint, many_small_state, measure, parse_size, transformer_state

OURS = ("import sys; from ckpttools.formats.safetensors_file import SafetensorsReader\n"
        "with SafetensorsReader(sys.argv[1]) as r:\n"
        "    [(e.key, e.dtype, e.shape) for e in r.entries()]")
SAFE_OPEN = ("import sys; from safetensors import safe_open\n"
             "with safe_open(sys.argv[1], framework='pt') as f:\n"
             "    [(k, f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()]")
IN_PROCESS = ("import sys, time; from ckpttools.formats.safetensors_file import SafetensorsReader\n"
              "best = 1e9\n"
              "for _ in range(5):\n"
              "    t = time.perf_counter()\n"
              "    with SafetensorsReader(sys.argv[1]) as r:\n"
              "        r.entries()\n"
              "    best = min(best, time.perf_counter() - t)\n"
              "print(f'{best * 1000:.1f} ms for {len(r.entries())} tensors')")


def _row(label: str, path: str) -> None:
    py = sys.executable
    ours = measure([py, "-c", OURS, path])
    base = measure([py, "-c", SAFE_OPEN, path])
    inner = subprocess.run([py, "-c", IN_PROCESS, path], capture_output=True, text=True,
                           check=True).stdout.strip()
    print(f"  {label:32s} ckpttools {ours}   safe_open {base}   "
          f"speed-up x{base.wall / ours.wall:5.1f}   RSS ratio {ours.rss_mb / base.rss_mb:4.2f}   "
          f"entries(): {inner}", flush=True)


def run(sizes: list[str]) -> None:
    _row("20,000 tensors", str(checkpoint("small-20000", many_small_state, "safetensors")))
    for size in sizes:
        nbytes = parse_size(size)
        name = f"gpt-{size}-bfloat16"
        _row(f"{name}.safetensors", str(checkpoint(
            name, lambda: transformer_state(nbytes, "bfloat16"), "safetensors")))


if __name__ == "__main__":
    run(sys.argv[1:] or ["256MB"])
