"""SGD with momentum and a StepLR schedule: the resume needs the momentum buffers and the scheduler.

    ckpttools verify-resume --recipe examples/sgd_momentum_steplr.py --steps 8 --resume-at 3
"""

from __future__ import annotations

import torch
from torch import nn

g = torch.Generator().manual_seed(1)
X = torch.randn(64, 8, generator=g)
Y = X @ torch.randn(8, 1, generator=g)


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def build_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = i % 4
    return X[k * 16:(k + 1) * 16], Y[k * 16:(k + 1) * 16]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)
