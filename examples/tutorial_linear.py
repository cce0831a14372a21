"""The PyTorch checkpoint tutorial as a recipe: ``nn.Linear(1, 1)``, SGD lr 0.1, MSE on x = [1, 2, 3, 4], y = 2x.

One step per epoch (the whole data set is one batch); 5 epochs with a checkpoint at epoch 3::

    ckpttools verify-resume --recipe examples/tutorial_linear.py --steps 5 --resume-at 3
"""

from __future__ import annotations

import torch
from torch import nn

X = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
Y = 2 * X


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(1, 1)


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return X, Y


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)
