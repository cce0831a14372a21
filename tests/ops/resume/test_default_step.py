"""The default step (a recipe with ``loss`` and no ``train_step``) on torch's own objects that a
bare ``optimizer.step()`` / ``scheduler.step()`` cannot drive: ``ReduceLROnPlateau`` (needs its
metric) and ``LBFGS`` (needs a closure). Both stopped as an internal error; the resume of files a
plain torch loop wrote must reproduce them bitwise, and what still cannot run is one line."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.api import verify_resume
from ckpttools.cli.main import cli
from tests.ops.resume.recipes import write_recipe

COMMON = '''
import torch
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

def batch(i):
    g = torch.Generator().manual_seed(i % 3)
    return torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)

def loss(model, b):
    return nn.functional.mse_loss(model(b[0]), b[1])
'''
PLATEAU = COMMON + '''
def build_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5, threshold=0.5)
'''
LBFGS = COMMON + '''
def build_optimizer(model):
    return torch.optim.LBFGS(model.parameters(), lr=0.5, history_size=3, max_iter=4)
'''


def _namespace(text: str) -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(text, namespace)  # noqa: S102 - the recipe's own objects, for the plain loop
    return namespace


def _plain_loop(tmp_path: Path, text: str, saves: tuple[int, ...]) -> list[str]:
    """Train as a plain torch loop does, saving the tutorial layout at ``saves``."""
    r = _namespace(text)
    torch.manual_seed(0)
    model: nn.Module = r["build_model"]()  # type: ignore[operator]
    optimizer = r["build_optimizer"](model)  # type: ignore[operator]
    scheduler = r["build_scheduler"](optimizer) if "build_scheduler" in r else None  # type: ignore[operator]
    paths = []
    for i in range(max(saves) + 1):
        if i in saves:
            paths.append(str(tmp_path / f"ckpt_{i}.pt"))
            state = {"step": i, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
            if scheduler is not None:
                state["scheduler_state_dict"] = scheduler.state_dict()
            torch.save(state, paths[-1])
        data = r["batch"](i)  # type: ignore[operator]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            value = r["loss"](model, data)  # type: ignore[operator]
            value.backward()
            return value

        if isinstance(optimizer, torch.optim.LBFGS):
            value = optimizer.step(closure)
        else:
            value = closure()
            optimizer.step()
        if scheduler is not None:
            scheduler.step(value.item())  # the plateau watches the loss
    return paths


def test_reduce_lr_on_plateau_resumes_the_plain_loop_bitwise(tmp_path: Path) -> None:
    ckpt, nxt = _plain_loop(tmp_path, PLATEAU, (2, 6))
    saved = torch.load(nxt, weights_only=True)
    assert saved["optimizer_state_dict"]["param_groups"][0]["lr"] < 0.1  # the plateau did cut the LR
    result = verify_resume(write_recipe(tmp_path, PLATEAU), ckpt, nxt)
    assert result.status == "identical", result.verdict
    assert any(d.key.startswith("scheduler_state_dict.") for d in result.final_diffs)


def test_lbfgs_resumes_the_plain_loop_bitwise(tmp_path: Path) -> None:
    ckpt, nxt = _plain_loop(tmp_path, LBFGS, (2, 5))
    assert "old_dirs" in torch.load(ckpt, weights_only=True)["optimizer_state_dict"]["state"][0]
    result = verify_resume(write_recipe(tmp_path, LBFGS), ckpt, nxt)
    assert result.status == "identical", result.verdict
    assert any(".old_dirs." in d.key for d in result.final_diffs)


def test_lbfgs_without_its_history_diverges_naming_the_optimizer(tmp_path: Path) -> None:
    dropping = LBFGS + '''
def save_checkpoint(path, state):
    torch.save({k: v for k, v in state.items() if k != "optimizer_state_dict"}, path)
'''
    result = verify_resume(write_recipe(tmp_path, dropping), steps=5, resume_at=2, fresh_process=False)
    assert result.status == "diverged"
    assert "no optimizer state; the optimizer keeps" in result.verdict and "old_dirs" in result.verdict


def test_a_step_the_default_cannot_run_is_one_line(tmp_path: Path) -> None:
    # GradScaler.step calls optimizer.step() without a closure, which LBFGS refuses
    recipe = write_recipe(tmp_path, LBFGS + '''
def build_scaler():
    return torch.amp.GradScaler("cpu")
''')
    out = CliRunner().invoke(cli, ["verify-resume", "--recipe", recipe, "--steps", "3", "--resume-at", "1",
                                   "--in-process"])
    assert out.exit_code == 2 and out.stdout == ""
    assert "internal error" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert "the default step failed: TypeError" in out.stderr
    assert "define train_step(model, optimizer, scheduler, batch)" in out.stderr
