"""The model of the size sweep: a GPT-like ``nn.Module`` whose float32 state_dict is about
``size`` bytes, built only from plain torch layers (Embedding, Linear, LayerNorm).

``16MB`` is 3.6M parameters, ``256MB`` 67M (GPT-2-small-like, width 768), ``1GB`` 247M,
``4GB`` 1.0B (width 2048). It is a spec for ``--model``: ``scripts/bench_model.py:BenchGPT``.
"""

from __future__ import annotations

from torch import nn


def parse_size(text: str) -> int:
    """``256MB`` / ``1GB`` / ``4GB`` -> bytes (decimal units, as disk sizes are quoted)."""
    text = text.strip().upper().rstrip("B")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * scale)


def gpt_dims(total_bytes: int) -> tuple[int, int, int]:
    """``(vocab, hidden, layers)`` of a float32 GPT-like model of about ``total_bytes``."""
    vocab, hidden = (8000, 256) if total_bytes < 64 * 10**6 else (
        (32000, 768) if total_bytes < 512 * 10**6 else
        (32000, 1024) if total_bytes < 2 * 10**9 else (32000, 2048))
    layer = 12 * hidden * hidden * 4
    return vocab, hidden, max(1, round((total_bytes - vocab * hidden * 4) / layer))


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = nn.ModuleDict({"qkv": nn.Linear(hidden, 3 * hidden),
                                   "out": nn.Linear(hidden, hidden)})
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = nn.ModuleDict({"up": nn.Linear(hidden, 4 * hidden),
                                  "down": nn.Linear(4 * hidden, hidden)})


class BenchGPT(nn.Module):
    """Embedding, ``layers`` blocks of attention and MLP projections and a final norm."""

    def __init__(self, size: str = "256MB") -> None:
        super().__init__()
        vocab, hidden, layers = gpt_dims(parse_size(size))
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)


def bench_state(size: str, seed: int = 0) -> dict:
    """The state_dict ``BenchGPT(size)`` expects, filled with seeded random values; built
    without running the model's initialisers."""
    import torch

    with torch.device("meta"):
        shapes = {k: t.shape for k, t in BenchGPT(size).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=gen) for key, shape in shapes.items()}
