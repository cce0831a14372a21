"""inspect: ckpttools vs torch.load(mmap=True, weights_only=True) vs safetensors' safe_open."""

from __future__ import annotations

import sys

from benchlib import checkpoint, ckpttools_cmd, many_small_state, measure, parse_size, transformer_state

TORCH_LOAD = "import sys, torch; torch.load(sys.argv[1], mmap=True, weights_only=True)"
SAFE_OPEN = ("import sys; from safetensors import safe_open\n"
             "with safe_open(sys.argv[1], framework='pt') as f:\n"
             "    [f.get_slice(k).get_shape() for k in f.keys()]")


def _row(label: str, path: str, baseline: list[str]) -> None:
    ours = measure(ckpttools_cmd("inspect", path, "--format", "json"))
    base = measure(baseline)
    print(f"  {label:34s} ckpttools {ours}   baseline {base}   "
          f"speed-up x{base.wall / ours.wall:5.1f}   RSS ratio {ours.rss_mb / base.rss_mb:4.2f}",
          flush=True)


def run(sizes: list[str]) -> None:
    py = sys.executable
    for size in sizes:
        nbytes = parse_size(size)
        for dtype in ("float32", "bfloat16"):
            name = f"gpt-{size}-{dtype}"
            pth = str(checkpoint(name, lambda: transformer_state(nbytes, dtype), "pth"))
            _row(f"{name}.pth vs torch.load", pth, [py, "-c", TORCH_LOAD, pth])
            st = str(checkpoint(name, lambda: transformer_state(nbytes, dtype), "safetensors"))
            _row(f"{name}.safetensors vs safe_open", st, [py, "-c", SAFE_OPEN, st])
    pth = str(checkpoint("small-20000", many_small_state, "pth"))
    _row("20,000 tensors .pth vs torch.load", pth, [py, "-c", TORCH_LOAD, pth])
    st = str(checkpoint("small-20000", many_small_state, "safetensors"))
    _row("20,000 tensors .safetensors vs safe_open", st, [py, "-c", SAFE_OPEN, st])
