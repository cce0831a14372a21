"""Write a training checkpoint like PyTorch's "saving and loading a general checkpoint" tutorial.

The tutorial's convnet is trained with SGD (momentum 0.9) on a small synthetic batch set and
saved at epoch 3 of 5 as ``{"epoch", "model_state_dict", "optimizer_state_dict", "loss"}``.

Usage: python examples/tutorial_checkpoint.py OUT.pth
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    """The tutorial's CIFAR-10 convnet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main(out: str, epochs: int = 5, save_at: int = 3) -> None:
    torch.manual_seed(0)
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for epoch in range(1, epochs + 1):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        if epoch == save_at:
            torch.save({"epoch": epoch, "model_state_dict": net.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict(), "loss": loss.item()}, out)
            print(f"saved epoch {epoch} of {epochs} (loss {loss.item():.4f}) to {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "checkpoint.pth")
