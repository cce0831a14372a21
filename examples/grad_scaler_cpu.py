"""Mixed precision bookkeeping on CPU: a GradScaler whose scale changes during training.

The scale starts high and grows every step, so steps overflow and are skipped now and then;
a resume without the scaler state skips different steps::

    ckpttools verify-resume --recipe examples/grad_scaler_cpu.py --steps 8 --resume-at 4
"""

from __future__ import annotations

import torch
from torch import nn

g = torch.Generator().manual_seed(3)
X = torch.randn(32, 4, generator=g)
Y = X.sum(1, keepdim=True)


def build_model() -> nn.Module:
    return nn.Linear(4, 1)


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05)


def build_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**124, growth_interval=1)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = i % 4
    return X[k * 8:(k + 1) * 8], Y[k * 8:(k + 1) * 8]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)
