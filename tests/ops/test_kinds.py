"""Kinds from structure: an optimizer, scheduler or RNG state saved alone is never taken for model
weights, and a folder's optimizer file is never the default state_dict (files written by torch)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.errors import KeyNotFoundError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.inspect import inspect_checkpoint
from ckpttools.ops.state_dict import find_state_dict


def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


@pytest.fixture
def pieces(tmp_path: Path) -> Path:
    """A folder as a hand-written training loop leaves it: weights, optimizer, scheduler, RNG."""
    model, opt, sched = trained()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    torch.save(sched.state_dict(), tmp_path / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state(), "python": random.getstate()}, tmp_path / "rng.pth")
    return tmp_path


@pytest.mark.parametrize(("name", "kind"), [("optimizer.pt", "optimizer"), ("rng.pth", "rng")])
def test_a_training_piece_alone_has_its_kind_and_no_default(pieces: Path, name: str,
                                                            kind: str) -> None:
    with open_checkpoint(pieces / name) as reader:
        result = inspect_checkpoint(reader)
        assert [(s.key, s.kind) for s in result.layout] == [("", kind)]
        assert result.default_state_dict is None
        with pytest.raises(KeyNotFoundError, match="not model weights"):
            find_state_dict(reader)


def test_diff_refuses_an_optimizer_file_with_one_line(pieces: Path, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["diff", str(pieces / "optimizer.pt"), "--model", "torch.nn:Linear",
                                 "-a", "in_features=4", "-a", "out_features=8"])
    assert result.exit_code == 2
    assert "optimizer state (state + param_groups), not model weights" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_folder_default_is_the_weights_not_the_optimizer(pieces: Path) -> None:
    with open_checkpoint(pieces) as reader:
        result = inspect_checkpoint(reader)
        view = find_state_dict(reader)
    kinds = {s.key: s.kind for s in result.layout}
    assert kinds == {"model.pt": "model", "optimizer.pt": "optimizer", "rng.pth": "rng"}
    assert view.prefix == "model.pt" == result.default_state_dict
    assert [e.key for e in view.entries] == list(trained()[0].state_dict())


def test_key_still_reaches_an_optimizer_state_on_purpose(pieces: Path) -> None:
    with open_checkpoint(pieces) as reader:
        view = find_state_dict(reader, "optimizer.pt.state")
    assert view.how == "key" and len(view.entries) == 12  # step, exp_avg, exp_avg_sq x 4 params
