"""``verify-resume CKPT NEXT`` where NEXT holds less than the resume: a plain loop that saves
the model alone at the end, or torch's RNG state alone (``{"torch": torch.get_rng_state()}``).
Only what both hold is compared: torch's RNG alone was "DIVERGED ... rng_state.python" (exit 1),
and "bitwise identical" must say which pieces were not compared, or a CKPT whose scheduler state
is wrong is vouched for."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from ckpttools.api import verify_resume
from ckpttools.cli.main import cli

RECIPE = Path(__file__).resolve().parents[3] / "examples" / "sgd_momentum_steplr.py"


def _plain_loop(tmp_path: Path) -> dict[str, str]:
    """SGD with momentum and StepLR, the tutorial layout at steps 3 and 4 (torch's RNG state alone
    in ``*_torch_rng``), the model alone at step 4, and the step-3 file with the scheduler's
    counters of step 0."""
    spec = importlib.util.spec_from_file_location("recipe_under_test", RECIPE)
    assert spec is not None and spec.loader is not None
    r = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(r)
    torch.manual_seed(0)
    model = r.build_model()
    optimizer = r.build_optimizer(model)
    scheduler = r.build_scheduler(optimizer)
    names = ("ckpt", "next", "ckpt_torch_rng", "next_torch_rng", "model_only", "bad_sched")
    paths = {name: str(tmp_path / f"{name}.pt") for name in names}
    for i in range(5):
        if i in (3, 4):
            state = {"step": i, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                     "scheduler_state_dict": scheduler.state_dict(), "rng_state": {"torch": torch.get_rng_state()}}
            torch.save(state, paths["ckpt_torch_rng" if i == 3 else "next_torch_rng"])
            full = dict(state, rng_state=dict(state["rng_state"], python=random.getstate(),
                                                        numpy=np.random.get_state()))
            torch.save(full, paths["ckpt" if i == 3 else "next"])
            if i == 4:
                torch.save({"step": i, "model_state_dict": model.state_dict()}, paths["model_only"])
            else:
                state["scheduler_state_dict"] = dict(state["scheduler_state_dict"], last_epoch=0, _step_count=1)
                torch.save(state, paths["bad_sched"])
        optimizer.zero_grad()
        r.loss(model, r.batch(i)).backward()
        optimizer.step()
        scheduler.step()
    return paths


def test_pieces_next_lacks_are_named_as_not_compared(tmp_path: Path) -> None:
    p = _plain_loop(tmp_path)
    full = verify_resume(str(RECIPE), p["ckpt"], p["next"])
    assert full.status == "identical" and "not compared" not in full.verdict, full.verdict
    partial = verify_resume(str(RECIPE), p["ckpt"], p["model_only"])
    assert partial.status == "identical"
    assert "not compared: the next checkpoint has no optimizer state, scheduler state, RNG state" in partial.verdict
    assert not any(d.key.startswith("scheduler_state_dict") for d in partial.final_diffs)


def test_torch_rng_state_alone_is_compared_not_called_a_divergence(tmp_path: Path) -> None:
    p = _plain_loop(tmp_path)
    out = CliRunner().invoke(cli, ["verify-resume", "--recipe", str(RECIPE), p["ckpt_torch_rng"], p["next_torch_rng"]])
    assert out.exit_code == 0, out.stdout
    assert out.stdout.startswith("OK: bitwise identical")
    assert "not compared: the next checkpoint has no python RNG state" in out.stdout.splitlines()[0]
    result = verify_resume(str(RECIPE), p["ckpt_torch_rng"], p["next_torch_rng"])
    assert [d.status for d in result.final_diffs if d.key.startswith("rng_state")] == ["identical"]


def test_a_wrong_scheduler_is_caught_by_a_full_next_and_not_vouched_for_by_a_partial_one(tmp_path: Path) -> None:
    p = _plain_loop(tmp_path)
    caught = verify_resume(str(RECIPE), p["bad_sched"], p["next"])
    assert caught.status == "diverged", caught.verdict
    optimizer = next(a for a in caught.attributions if a.piece == "optimizer")
    # one resumed step: its loss is computed before the optimizer steps, so the loss cannot change
    assert optimizer.matters and "changes the resumed state (not the loss" in optimizer.note, optimizer.note
    assert "changes the loss by 0.0e+00" not in optimizer.note
    out = CliRunner().invoke(cli, ["verify-resume", "--recipe", str(RECIPE), p["bad_sched"], p["model_only"],
                                   "--format", "json"])
    assert out.exit_code == 0, out.stderr
    verdict = json.loads(out.stdout)["verdict"]
    assert "scheduler state" in verdict.split("not compared:")[1], verdict
