"""Two pieces missing from a checkpoint, each needed: restoring either alone does not make the
resume match, restoring both does. The verdict names them, never "state outside the checkpoint"."""

from __future__ import annotations

from pathlib import Path

from ckpttools.api import verify_resume

RECIPE = '''
import torch

def build_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))

def build_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=0.1)

def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

def batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)

def loss(model, b):
    x, y = b
    return torch.nn.functional.mse_loss(model(x), y)

def save_checkpoint(path, state):
    # the scheduler and the RNG states are left out
    torch.save({k: state[k] for k in ("step", "model_state_dict", "optimizer_state_dict")}, path)
'''


def test_two_missing_pieces_needed_together_are_named(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    result = verify_resume(str(recipe), steps=5, resume_at=3, fresh_process=False)
    assert result.status == "diverged" and set(result.missing) == {"scheduler", "rng"}
    assert not any(a.explains for a in result.attributions)  # neither alone
    assert "outside the checkpoint" not in result.verdict
    assert "restored together they make the resume match" in result.verdict
    assert "scheduler state" in result.verdict and "RNG state" in result.verdict
