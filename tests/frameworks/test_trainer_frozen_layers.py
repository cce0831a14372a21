"""An HF Trainer run with a frozen layer: Trainer builds its optimizer over the trainable
parameters only, so ``optimizer.pt`` holds fewer parameters than ``model.safetensors``. The
checkpoint resumes; ``audit --require optimizer`` FAILed it ("holds 16 parameters, the model
weights 28"). Without a model the files cannot tell a frozen layer from a changed model (WARN);
a model that freezes that layer explains it (PASS); one that freezes nothing does not (WARN)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ckpttools.ops.audit.audit import audit_checkpoints
from ckpttools.ops.audit.config import AuditConfig
from tests.frameworks.writers import example

pytestmark = [pytest.mark.frameworks, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

MODELS = '''
import sys
sys.path.insert(0, {examples!r})
import hf_trainer_recipe


def frozen_gpt2():
    model = hf_trainer_recipe.tiny_gpt2()
    model.transformer.h[0].requires_grad_(False)
    return model


def all_trainable():
    return hf_trainer_recipe.tiny_gpt2()
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from transformers import Trainer, TrainingArguments

    tmp = tmp_path_factory.mktemp("frozen")
    recipe = example("hf_trainer_recipe")
    model = recipe.tiny_gpt2()
    model.transformer.h[0].requires_grad_(False)
    args = TrainingArguments(output_dir=str(tmp / "out"), per_device_train_batch_size=4, max_steps=2,
                             save_steps=2, learning_rate=1e-3, seed=0, report_to=[], use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=recipe.token_dataset()).train()
    specs = tmp / "models.py"
    specs.write_text(MODELS.format(examples=str(Path(recipe.__file__).parent)))
    return tmp / "out" / "checkpoint-2", str(specs)


def _completeness(path: Path, model: str | None) -> tuple[str, str]:
    result = audit_checkpoints(str(path), AuditConfig(require=("optimizer",), model=model))
    row = next(c for c in result.checks if c.check == "completeness")
    return row.status, row.reason


def test_the_trainer_optimizer_holds_only_the_trainable_parameters(run: tuple[Path, str]) -> None:
    ckpt, _ = run
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert sum(len(g["params"]) for g in opt["param_groups"]) == 16  # of the model's 28 weights


def test_without_a_model_it_is_a_warn_saying_it_cannot_tell(run: tuple[Path, str]) -> None:
    status, reason = _completeness(run[0], None)
    assert status == "WARN", reason
    assert "holds 16 parameters, the model weights 28" in reason and "--model SPEC tells" in reason


def test_a_model_freezing_that_layer_passes(run: tuple[Path, str]) -> None:
    ckpt, specs = run
    status, reason = _completeness(ckpt, f"{specs}:frozen_gpt2")
    assert status == "PASS", reason


def test_a_model_freezing_nothing_warns(run: tuple[Path, str]) -> None:
    ckpt, specs = run
    status, reason = _completeness(ckpt, f"{specs}:all_trainable")
    assert status == "WARN", reason
    assert "the model trains 28 of its 28" in reason


LIGHTNING = '''
import lightning as L
import torch
from torch import nn


class Net(L.LightningModule):
    def __init__(self, freeze: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
        if freeze:
            self.net[0].requires_grad_(False)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)  # the frozen layer too: it gets no state


def frozen():
    return Net(True)


def trainable():
    return Net(False)
'''


def test_lightning_frozen_layer_in_the_optimizer_passes_only_with_a_model_freezing_it(tmp_path: Path) -> None:
    import lightning as L

    (tmp_path / "lit.py").write_text(LIGHTNING)
    sys.path.insert(0, str(tmp_path))
    try:
        import lit  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(lit.frozen(), torch.utils.data.DataLoader(data, batch_size=4))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    del sys.modules["lit"]
    assert sorted(torch.load(ckpt, weights_only=False)["optimizer_states"][0]["state"]) == [2, 3]
    status, reason = _completeness(ckpt, None)
    assert status == "WARN" and "no state for 2 of 4 parameters (net.0.weight, net.0.bias)" in reason, reason
    assert "--model SPEC tells" in reason
    status, reason = _completeness(ckpt, f"{tmp_path / 'lit.py'}:frozen")
    assert status == "PASS", reason
    status, reason = _completeness(ckpt, f"{tmp_path / 'lit.py'}:trainable")
    assert status == "WARN" and "the model trains net.0.weight, net.0.bias" in reason, reason
