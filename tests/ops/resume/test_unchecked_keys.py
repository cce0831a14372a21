"""A checkpoint holding state outside the recipe's layout (an EMA model from
``torch.optim.swa_utils.AveragedModel``) that the resume forgets: "bitwise identical" alone
would vouch for what was never restored nor compared, so the verdict names it."""

from __future__ import annotations

from pathlib import Path

import torch

from ckpttools.api import verify_resume

RECIPE = '''
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EMA = {}

def build_model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    EMA["model"] = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    return model

def build_optimizer(model):
    return torch.optim.Adam(model.parameters(), lr=0.01)

def batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)

def train_step(model, optimizer, scheduler, b):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(b[0]), b[1])
    loss.backward()
    optimizer.step()
    EMA["model"].update_parameters(model)
    return loss

def save_checkpoint(path, state):
    torch.save(dict(state, ema_state_dict=EMA["model"].state_dict()), path)

def load_checkpoint(path):
    return torch.load(path, weights_only=False)  # the EMA is never loaded back
'''


def test_state_outside_the_layout_is_named_not_vouched_for(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    result = verify_resume(str(recipe), steps=5, resume_at=3, fresh_process=False)
    saved = tmp_path / "probe.pt"
    # the file does hold the EMA: the resume's objects have no place for it
    namespace: dict[str, object] = {}
    exec(compile(RECIPE, str(recipe), "exec"), namespace)
    namespace["build_model"]()  # type: ignore[operator]
    namespace["save_checkpoint"](str(saved), {"step": 0})  # type: ignore[operator]
    assert "ema_state_dict" in torch.load(saved, weights_only=False)
    assert result.status == "identical"  # the training itself resumes bitwise
    assert "not checked: the checkpoint's ema_state_dict" in result.verdict, result.verdict


def test_checkpoint_in_the_layout_names_nothing_unchecked(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE.split("def save_checkpoint")[0])
    result = verify_resume(str(recipe), steps=5, resume_at=3, fresh_process=False)
    assert result.ok and "not checked" not in result.verdict, result.verdict
