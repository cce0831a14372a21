"""A tiny Lightning module and data module (importable by spec in recipes and tests)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class TinyModule(L.LightningModule):
    """Two linear layers, AdamW and a StepLR; logs ``val_loss`` for ``ModelCheckpoint``."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


class TinyData(L.LightningDataModule):
    """Seeded random classification data; shuffled training batches."""

    def __init__(self, n: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def train_dataloader(self) -> Any:
        data = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)

    def val_dataloader(self) -> Any:
        data = torch.utils.data.TensorDataset(self.x[:8], self.y[:8])
        return torch.utils.data.DataLoader(data, batch_size=8)
