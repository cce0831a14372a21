"""verify-resume recipe for Lightning: a two-layer module with AdamW and a StepLR, 2 epochs,
``ModelCheckpoint`` on ``val_loss`` (``epoch0-step4.ckpt``, ``epoch1-step8.ckpt``, ``last.ckpt``).

    python examples/lightning_recipe.py out
    ckpttools verify-resume --recipe examples/lightning_recipe.py out/epoch0-step4.ckpt out/epoch1-step8.ckpt

ckpttools calls ``build_trainer(output_dir)``, ``build_module()`` and ``build_datamodule()`` in a
fresh process and resumes with ``trainer.fit(module, datamodule=dm, ckpt_path=CKPT)``.
Lightning saves no RNG state, so the training data is shuffled by a sampler seeded per epoch
(``DistributedSampler(num_replicas=1, rank=0)``, whose ``set_epoch`` Lightning calls); shuffling
with the global RNG would make every resume differ from the uninterrupted run.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class TinyModule(L.LightningModule):
    """Two linear layers, AdamW and a StepLR; logs ``val_loss`` for ``ModelCheckpoint``."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
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
    """Seeded random classification data; training batches shuffled by a per-epoch seed."""

    def __init__(self, n: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.x, self.y)
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
        return DataLoader(data, batch_size=8, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:8], self.y[:8]), batch_size=8)


def build_module() -> TinyModule:
    return TinyModule()


def build_datamodule() -> TinyData:
    return TinyData()


def build_trainer(output_dir: str) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=output_dir, monitor="val_loss", save_top_k=2, save_last=True,
                           filename="epoch{epoch}-step{step}", auto_insert_metric_name=False)
    return L.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[ckpt], logger=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=output_dir, deterministic=True)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "out"
    build_trainer(out).fit(build_module(), datamodule=build_datamodule())
