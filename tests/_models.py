"""Small real models for tests; importable as a model spec: ``tests/_models.py:TinyNet``."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A seeded convnet with realistic key names: conv, BatchNorm, blocks, classifier head."""

    def __init__(self, num_classes: int = 10, depth: int = 2, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU())
                                      for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x))).mean(dim=(2, 3))
        return self.head(self.blocks(x))


def tiny_net(seed: int = 0, **kwargs: int) -> TinyNet:
    """A ``TinyNet`` with weights fixed by ``seed``."""
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


class ScaledNet(nn.Module):
    """A block with a LayerNorm and a LayerScale whose parameter is named ``gamma`` (as timm's
    ``LayerScale`` and ConvNeXt's blocks name it): a ``gamma`` that is not a norm's old name."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.ln = nn.LayerNorm(width)
        self.ls = nn.Module()
        self.ls.gamma = nn.Parameter(torch.full((width,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls.gamma * self.ln(self.fc(x))


def scaled_net(seed: int = 0) -> ScaledNet:
    """A ``ScaledNet`` with weights fixed by ``seed``, its norm's values not the defaults."""
    torch.manual_seed(seed)
    net = ScaledNet()
    with torch.no_grad():
        net.ln.weight.uniform_(0.5, 1.5)
        net.ln.bias.uniform_(-0.5, 0.5)
    return net


class TaskNet(nn.Module):
    """A ``TinyNet`` backbone under ``backbone`` with a task head beside it (a fine-tuning model)."""

    def __init__(self, num_labels: int = 3) -> None:
        super().__init__()
        self.backbone = TinyNet()
        self.classifier = nn.Linear(10, num_labels)
