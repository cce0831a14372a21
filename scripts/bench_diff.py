"""Benchmark ``diff``: against a model spec, and between two checkpoints.

1. ``ckpttools diff CKPT --model scripts/bench_diff.py:BenchTransformer`` (model built on the
   meta device, checkpoint metadata only) against the obvious check: build the model for real,
   ``torch.load(mmap=True)`` and ``load_state_dict(strict=False)``. ``4GB`` is a ~1B-parameter
   float32 transformer.
2. ``ckpttools diff A B`` (tensor pairs streamed in chunks) against loading both with
   ``torch.load(mmap=True)`` and comparing tensor by tensor.

Usage: python scripts/bench.py diff --sizes 256MB      (default, small)
       python scripts/bench.py diff --sizes 4GB        (the 1B model; ~8 GB of disk)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import DATA, checkpoint, ckpttools_cmd, measure, parse_size, transformer_state  # noqa: E402

SPEC = f"{Path(__file__).resolve()}:BenchTransformer"
VOCAB = 32000


def hidden_for(total_bytes: int) -> int:
    """The width used for a checkpoint of ``total_bytes``: 2048 from 2 GB up (1B at 4 GB)."""
    return 2048 if total_bytes >= 2 * 10**9 else 1024


def layers_for(total_bytes: int, hidden: int) -> int:
    return max(1, (total_bytes - VOCAB * hidden * 4) // (12 * hidden * hidden * 4))


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.attn = nn.ModuleDict({"qkv": nn.Linear(hidden, 3 * hidden),
                                   "out": nn.Linear(hidden, hidden, bias=False)})
        self.mlp = nn.ModuleDict({"up": nn.Linear(hidden, 4 * hidden, bias=False),
                                  "down": nn.Linear(4 * hidden, hidden, bias=False)})
        self.ln1 = nn.LayerNorm(hidden, bias=False)
        self.ln2 = nn.LayerNorm(hidden, bias=False)


class BenchTransformer(nn.Module):
    """A GPT-like model whose state_dict matches ``benchlib.transformer_state``."""

    def __init__(self, size: str = "256MB") -> None:
        super().__init__()
        total = parse_size(size)
        hidden = hidden_for(total)
        self.embed = nn.Embedding(VOCAB, hidden)
        self.layers = nn.ModuleList(Block(hidden) for _ in range(layers_for(total, hidden)))
        self.norm = nn.LayerNorm(hidden, bias=False)


_MATERIALISE = """
import sys, torch
sys.path.insert(0, {scripts!r})
from bench_diff import BenchTransformer
model = BenchTransformer({size!r})
state = torch.load({path!r}, mmap=True, weights_only=True)
missing, unexpected = model.load_state_dict(state, strict=False)
print(len(missing), len(unexpected))
"""

_LOAD_BOTH = """
import torch
a = torch.load({a!r}, mmap=True, weights_only=True)
b = torch.load({b!r}, mmap=True, weights_only=True)
worst = 0.0
for k in a:
    if k in b:
        worst = max(worst, float((a[k].double() - b[k].double()).abs().max()))
        torch.allclose(a[k], b[k])
print(worst)
"""


def _model_checkpoint(size: str) -> Path:
    total = parse_size(size)
    return checkpoint(f"diff-model-{size}", lambda: transformer_state(
        total, hidden=hidden_for(total)), "pth")


def run(sizes: list[str]) -> None:
    """Print wall time and peak RSS of ckpttools and of the obvious approach, and their ratios."""
    scripts = str(Path(__file__).resolve().parent)
    for size in sizes:
        total = parse_size(size)
        ckpt = _model_checkpoint(size)
        params = sum(p.numel() for p in _meta_model(size).parameters())
        ours = measure(ckpttools_cmd("diff", str(ckpt), "--model", SPEC, "-a", f"size={size}"),
                       repeat=1 if total > 10**9 else 3)
        obvious = measure([sys.executable, "-c", _MATERIALISE.format(
            scripts=scripts, size=size, path=str(ckpt))], repeat=1)
        print(f"diff --model, {params / 1e9:.2f}B parameters ({size} checkpoint)")
        print(f"  ckpttools diff --model      {ours}")
        print(f"  materialise + load (strict=False) {obvious}")
        print(f"  ratio: {obvious.wall / ours.wall:.1f}x faster, "
              f"{obvious.rss_mb / ours.rss_mb:.1f}x less memory", flush=True)

        # the A-B target is about two 1 GB checkpoints; larger sizes reuse that
        pair = size if total <= 10**9 else "1GB"
        pair_bytes = parse_size(pair)
        other = checkpoint(f"diff-other-{pair}", lambda: transformer_state(pair_bytes), "pth")
        first = checkpoint(f"diff-first-{pair}", lambda: transformer_state(pair_bytes), "pth")
        # exit 1 is the expected verdict here: the two checkpoints differ
        ours = measure(ckpttools_cmd("diff", str(first), str(other)), repeat=1, ok_codes=(0, 1))
        obvious = measure([sys.executable, "-c", _LOAD_BOTH.format(a=str(first), b=str(other))],
                          repeat=1)
        print(f"diff A B, two {pair} checkpoints (values differ everywhere)")
        print(f"  ckpttools diff A B          {ours}")
        print(f"  torch.load(mmap) both + max diff, allclose {obvious}")
        print(f"  ratio: {obvious.wall / ours.wall:.1f}x faster, "
              f"{obvious.rss_mb / ours.rss_mb:.1f}x less memory", flush=True)
    print(f"(checkpoints kept in {DATA})")


def _meta_model(size: str) -> nn.Module:
    with torch.device("meta"):
        return BenchTransformer(size)


if __name__ == "__main__":
    run(sys.argv[1:] or ["256MB"])
