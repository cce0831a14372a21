"""A checkpoint whose state does not fit the recipe's objects: a param group added during
training (``add_param_group``), parameters frozen after saving, a model of another width.

The file is fine, the recipe builds other objects: the error names the piece, the param groups
on both sides and the recipe function to change, never "the file is damaged"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.api import verify_resume
from ckpttools.cli.main import cli
from ckpttools.errors import SpecError
from tests.ops.resume.recipes import write_recipe

COMMON = '''
import torch
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

def batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)

def loss(model, b):
    return nn.functional.mse_loss(model(b[0]), b[1])
'''
ONE_GROUP = COMMON + '''
def build_optimizer(model):
    return torch.optim.Adam(model[0].parameters(), lr=0.01)
'''
TWO_GROUPS = COMMON + '''
def build_optimizer(model):
    optimizer = torch.optim.Adam(model[0].parameters(), lr=0.01)
    optimizer.add_param_group({"params": list(model[2].parameters()), "lr": 0.001})
    return optimizer
'''
FROZEN = COMMON + '''
def build_optimizer(model):
    model[0].requires_grad_(False)  # frozen after the checkpoint was saved
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
'''
WIDER = ONE_GROUP.replace("nn.Linear(16, 1))", "nn.Linear(16, 2))")


def _train(tmp_path: Path, add_group_at: int | None, saves: tuple[int, ...], whole: bool = False) -> list[str]:
    """A plain torch loop: Adam over the first layer (``whole``: every layer), the head's group
    added at ``add_group_at``."""
    namespace: dict[str, object] = {}
    exec(COMMON, namespace)  # noqa: S102 - the recipe's own model and batches
    torch.manual_seed(0)
    model: nn.Sequential = namespace["build_model"]()  # type: ignore[operator]
    optimizer = torch.optim.Adam((model if whole else model[0]).parameters(), lr=0.01)
    paths = []
    for i in range(max(saves) + 1):
        if i == add_group_at:
            optimizer.add_param_group({"params": list(model[2].parameters()), "lr": 0.001})
        if i in saves:
            paths.append(str(tmp_path / f"ckpt_{i}.pt"))
            torch.save({"step": i, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict()}, paths[-1])
        optimizer.zero_grad()
        namespace["loss"](model, namespace["batch"](i)).backward()  # type: ignore[operator]
        optimizer.step()
    return paths


def test_param_group_added_during_training_names_both_sides(tmp_path: Path) -> None:
    ckpt, nxt = _train(tmp_path, add_group_at=2, saves=(3, 4))
    assert len(torch.load(ckpt, weights_only=True)["optimizer_state_dict"]["param_groups"]) == 2
    recipe = write_recipe(tmp_path, ONE_GROUP)
    with pytest.raises(SpecError, match=r"optimizer_state_dict does not fit the recipe's build_optimizer\(model\): "
                                        r"its param groups hold 2 groups of 2 \+ 2 parameters, .* returns 1 group of 2"):
        verify_resume(recipe, ckpt, nxt)
    out = CliRunner().invoke(cli, ["verify-resume", "--recipe", recipe, ckpt, nxt])
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "damaged" not in out.stderr, out.stderr
    assert "param groups added during training" in out.stderr


def test_the_advice_works_two_groups_built_resume_bitwise(tmp_path: Path) -> None:
    ckpt, nxt = _train(tmp_path, add_group_at=2, saves=(3, 4))
    result = verify_resume(write_recipe(tmp_path, TWO_GROUPS), ckpt, nxt)
    assert result.status == "identical", result.verdict


def test_parameters_frozen_after_saving(tmp_path: Path) -> None:
    ckpt, nxt = _train(tmp_path, add_group_at=None, saves=(3, 4), whole=True)
    with pytest.raises(SpecError, match=r"its param groups hold 1 group of 4 parameters, .* returns 1 group of 2; "):
        verify_resume(write_recipe(tmp_path, FROZEN), ckpt, nxt)


def test_model_of_another_width_names_the_key_not_damage(tmp_path: Path) -> None:
    ckpt, nxt = _train(tmp_path, add_group_at=None, saves=(3, 4))
    recipe = write_recipe(tmp_path, WIDER)
    out = CliRunner().invoke(cli, ["verify-resume", "--recipe", recipe, ckpt, nxt])
    assert out.exit_code == 2 and out.stdout == ""
    assert "model_state_dict does not fit the recipe's build_model(): Sequential: size mismatch for 2.weight" \
        in out.stderr, out.stderr
    assert "damaged" not in out.stderr and out.stderr.count("\n") == 1
