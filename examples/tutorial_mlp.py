"""The MLP checkpoint tutorial as a recipe: 3 layers (ReLU, sigmoid output), Adam, binary cross-entropy.

Data: 1000 x 10 features normalised to [0, 1], split 800 / 200; batches of 100, so an epoch is 8
steps. 5 epochs (40 steps) with a checkpoint after epoch 3 (step 24)::

    ckpttools verify-resume --recipe examples/tutorial_mlp.py --steps 40 --resume-at 24
"""

from __future__ import annotations

import torch
from torch import nn

BATCH_SIZE = 100
HIDDEN = 64


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(42)  # the data never touches the global RNG
    x = torch.randn(1000, 10, generator=g) * 3 + 1
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)  # normalised to [0, 1]
    y = (x.sum(1, keepdim=True) > 5).float()
    return x, y


X, Y = _data()
X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = X[:800], Y[:800], X[800:], Y[800:]
STEPS_PER_EPOCH = len(X_TRAIN) // BATCH_SIZE


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN // 2), nn.ReLU(),
                         nn.Linear(HIDDEN // 2, 1), nn.Sigmoid())


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    epoch, k = divmod(i, STEPS_PER_EPOCH)
    order = torch.randperm(len(X_TRAIN), generator=torch.Generator().manual_seed(epoch))  # shuffled per epoch
    idx = order[k * BATCH_SIZE:(k + 1) * BATCH_SIZE]
    return X_TRAIN[idx], Y_TRAIN[idx]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.binary_cross_entropy(model(x), y)
