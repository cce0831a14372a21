"""OneCycleLR over SGD with momentum, and a custom train_step with gradient clipping.

OneCycleLR also cycles the optimizer's momentum, so the resume needs the scheduler state::

    ckpttools verify-resume --recipe examples/onecycle.py --steps 10 --resume-at 4
"""

from __future__ import annotations

import torch
from torch import nn

TOTAL_STEPS = 20
g = torch.Generator().manual_seed(2)
X = torch.randn(64, 8, generator=g)
Y = (X[:, :1] > 0).float()


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def build_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=TOTAL_STEPS)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = i % 4
    return X[k * 16:(k + 1) * 16], Y[k * 16:(k + 1) * 16]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
               batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    optimizer.zero_grad()
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss
