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
