"""The tutorial MLP with dropout: the resume needs the RNG state, or the dropout masks change.

    ckpttools verify-resume --recipe examples/mlp_dropout.py --steps 16 --resume-at 8
"""

from __future__ import annotations

import torch
from torch import nn

BATCH_SIZE = 100
g = torch.Generator().manual_seed(42)
X = torch.rand(800, 10, generator=g)
Y = (X.sum(1, keepdim=True) > 5).float()


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 16), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(16, 1), nn.Sigmoid())


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = i % (len(X) // BATCH_SIZE)
    return X[k * BATCH_SIZE:(k + 1) * BATCH_SIZE], Y[k * BATCH_SIZE:(k + 1) * BATCH_SIZE]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.binary_cross_entropy(model(x), y)
