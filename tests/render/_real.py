"""Real checkpoints for the figure tests: a small transformer and a copy fine-tuned on a few
layers (real optimizer steps), written by torch.save and safetensors."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn

TRAINED = ("encoder.layers.2.", "head.")  # what the fine-tune touches; the rest is frozen


class TinyLM(nn.Module):
    """Embedding, three transformer encoder layers, a norm and a head (dims under 32)."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(tokens))))


def fine_tune(model: nn.Module, prefixes: tuple[str, ...], steps: int = 5, lr: float = 1e-2) -> nn.Module:
    """A copy of ``model`` trained ``steps`` Adam steps on next-token loss, only in ``prefixes``."""
    tuned = copy.deepcopy(model)
    params = []
    for name, p in tuned.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tokens = torch.randint(0, 50, (4, 9), generator=gen)
        logits = tuned(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 50), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned


@functools.lru_cache(maxsize=1)
def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    # trained once per test session; every caller gets its own copies
    torch.manual_seed(0)
    base = TinyLM()
    tuned = fine_tune(base, TRAINED)
    return base.state_dict(), {k: v.detach().contiguous() for k, v in tuned.state_dict().items()}


def tuned_pair(folder: Path) -> tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``base.pt`` (torch.save) and ``tuned.safetensors`` (fine-tuned copy): paths and states."""
    from safetensors.torch import save_file

    a, b = ({k: v.clone() for k, v in state.items()} for state in _states())
    torch.save(a, folder / "base.pt")
    save_file(b, str(folder / "tuned.safetensors"))
    return folder / "base.pt", folder / "tuned.safetensors", a, b
