"""``audit --require optimizer`` of fine-tuning checkpoints with frozen parameters, written by a
plain torch loop. Both load and resume in torch; both were FAILed as "parameters were reordered
or changed since the optimizer was saved": frozen parameters the optimizer holds have no state
(torch keeps none for a parameter without a gradient), and an optimizer over the unfrozen
parameters alone holds fewer parameters than the model, so positions cannot be mapped. LBFGS,
which keeps its state flat over every parameter under the first, FAILed the same way."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.ops.audit.audit import audit_checkpoints
from ckpttools.cli.main import cli
from ckpttools.ops.audit.config import AuditConfig


def _fine_tune(path: Path, subset: bool) -> str:
    """Freeze the first layer, train two steps, save the tutorial layout."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    model[0].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad] if subset else model.parameters()
    optimizer = torch.optim.Adam(params, lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
    torch.save({"step": 2, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               path)
    return str(path)


def _completeness(path: str) -> tuple[str, str]:
    result = audit_checkpoints(path, AuditConfig(require=("optimizer",)))
    row = next(c for c in result.checks if c.check == "completeness")
    return row.status, row.reason


def test_frozen_parameters_the_optimizer_holds_pass(tmp_path: Path) -> None:
    path = _fine_tune(tmp_path / "frozen.pt", subset=False)
    assert sorted(torch.load(path, weights_only=True)["optimizer_state_dict"]["state"]) == [2, 3]
    status, reason = _completeness(path)
    assert status == "PASS", reason
    assert "state for 2 of 4 parameters (torch keeps none for a parameter that never had a gradient" in reason
    assert "shapes match" in reason


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
