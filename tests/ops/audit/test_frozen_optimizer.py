"""``audit --require optimizer`` of fine-tuning checkpoints with frozen parameters, written by a
plain torch loop. Both load and resume in torch; both were FAILed as "parameters were reordered
or changed since the optimizer was saved": frozen parameters the optimizer holds have no state
(torch keeps none for a parameter without a gradient), and an optimizer over the unfrozen
parameters alone holds fewer parameters than the model, so positions cannot be mapped. LBFGS,
which keeps its state flat over every parameter under the first, FAILed the same way.

Parameters without state are fine only when they cannot have any: the file alone cannot tell a
frozen parameter from one unused in the loss, so without a model it is a WARN saying so; with
``--model`` the model's ``requires_grad`` decides."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.ops.audit.audit import audit_checkpoints
from ckpttools.cli.main import cli
from ckpttools.ops.audit.config import AuditConfig


MODELS = '''
from torch import nn

def frozen_first():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    model[0].requires_grad_(False)
    return model

def all_trainable():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
'''


def _fine_tune(path: Path, subset: bool, how: str = "frozen") -> str:
    """Freeze the first layer (or leave it out of the loss, or train all), train two steps, save
    the tutorial layout."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    if how == "frozen":
        model[0].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad] if subset else model.parameters()
    optimizer = torch.optim.Adam(params, lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        out = model[2](torch.randn(4, 16)) if how == "unused" else model(torch.randn(4, 8))
        out.sum().backward()
        optimizer.step()
    torch.save({"step": 2, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               path)
    return str(path)


def _completeness(path: str, model: str | None = None) -> tuple[str, str]:
    result = audit_checkpoints(path, AuditConfig(require=("optimizer",), model=model))
    row = next(c for c in result.checks if c.check == "completeness")
    return row.status, row.reason


def _models(tmp_path: Path) -> str:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return str(path)


def test_stateless_parameters_without_a_model_cannot_be_told_apart(tmp_path: Path) -> None:
    frozen = _fine_tune(tmp_path / "frozen.pt", subset=False)
    unused = _fine_tune(tmp_path / "unused.pt", subset=False, how="unused")
    for path in (frozen, unused):  # the same file either way: the file cannot tell which it is
        assert sorted(torch.load(path, weights_only=True)["optimizer_state_dict"]["state"]) == [2, 3]
        status, reason = _completeness(path)
        assert status == "WARN", reason
        assert reason.startswith("optimizer 'optimizer_state_dict': state for 2 of 4 parameters, shapes match; "
                                 "none for 0.weight, 0.bias: ")
        assert "cannot be told from the file (--model SPEC" in reason


def test_frozen_parameters_the_optimizer_holds_pass_with_the_model(tmp_path: Path) -> None:
    path = _fine_tune(tmp_path / "frozen.pt", subset=False)
    status, reason = _completeness(path, f"{_models(tmp_path)}:frozen_first")
    assert status == "PASS", reason
    assert reason.endswith("state for 2 of 4 parameters, shapes match; the 2 without it are frozen in the "
                           "model (requires_grad=False)")


def test_stateless_parameters_the_model_trains_warn_by_name(tmp_path: Path) -> None:
    path = _fine_tune(tmp_path / "unused.pt", subset=False, how="unused")
    status, reason = _completeness(path, f"{_models(tmp_path)}:all_trainable")
    assert status == "WARN", reason
    assert "none for 2 the model trains (0.weight, 0.bias)" in reason and "moments from zero" in reason
    out = CliRunner().invoke(cli, ["audit", path, "--require", "optimizer", "--model",
                                   f"{_models(tmp_path)}:all_trainable"])
    assert out.exit_code == 0 and "WARN" in out.stdout, out.stdout


def test_parameters_the_model_freezes_that_have_state_warn(tmp_path: Path) -> None:
    path = _fine_tune(tmp_path / "all.pt", subset=False, how="all")
    status, reason = _completeness(path, f"{_models(tmp_path)}:frozen_first")
    assert status == "WARN", reason
    assert "the model freezes 2 that have state (0.weight, 0.bias)" in reason


def test_an_optimizer_over_the_trainable_parameters_maps_through_the_model(tmp_path: Path) -> None:
    path = _fine_tune(tmp_path / "subset.pt", subset=True)
    status, reason = _completeness(path, f"{_models(tmp_path)}:frozen_first")
    assert status == "PASS", reason
    assert reason.endswith("state for all 2 parameters, shapes match")


def test_an_optimizer_over_the_unfrozen_parameters_is_a_warn_not_a_fail(tmp_path: Path) -> None:
    path = _fine_tune(tmp_path / "subset.pt", subset=True)
    status, reason = _completeness(path)
    assert status == "WARN", reason
    assert "holds 2 parameters, the model state_dict 4" in reason and "shapes not checked" in reason
    assert "reordered" not in reason
    out = CliRunner().invoke(cli, ["audit", path, "--require", "optimizer"])
    assert out.exit_code == 0, out.stdout


def test_lbfgs_flat_state_under_the_first_parameter_passes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.LBFGS(model.parameters(), history_size=3, max_iter=4)
    x = torch.randn(4, 8)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = model(x).square().mean()
        value.backward()
        return value

    for _ in range(2):
        optimizer.step(closure)
    path = str(tmp_path / "lbfgs.pt")
    torch.save({"step": 2, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               path)
    assert torch.load(path, weights_only=True)["optimizer_state_dict"]["state"][0]["d"].shape == (161,)
    status, reason = _completeness(path)
    assert status == "PASS", reason
