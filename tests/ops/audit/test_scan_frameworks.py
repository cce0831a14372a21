"""Checkpoints written by transformers, Lightning and accelerate scan as safe (exit 0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.ops.audit.scan import scan_checkpoint

pytestmark = [pytest.mark.frameworks, pytest.mark.filterwarnings("ignore")]


def test_transformers_save_pretrained(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, vocab_size=50))
    model.save_pretrained(tmp_path / "hf", safe_serialization=False)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    result = scan_checkpoint(tmp_path)
    assert result.exit_code == 0 and len(result.files) >= 2, result.to_dict()


def test_lightning_trainer_checkpoint(tmp_path: Path) -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: list[torch.Tensor], idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)),
                                       batch_size=2)
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), data)
    result = scan_checkpoint(tmp_path)
    assert result.exit_code == 0 and any(f.path.endswith(".ckpt") for f in result.files)


def test_accelerate_save_state(tmp_path: Path) -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    acc.save_state(tmp_path / "state")
    result = scan_checkpoint(tmp_path)
    names = [Path(f.path).name for f in result.files]
    assert result.exit_code == 0 and "random_states_0.pkl" in names, result.to_dict()
