"""Per-step drift per piece of state (``verify_resume(drift=True)``, the data of
``verify-resume --plot``), from real runs of the example recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckpttools.ops.resume import drift as drift_mod
from ckpttools.ops.resume.drift import max_abs_difference
from ckpttools.ops.resume.verify import verify_resume
from tests.ops.resume.test_verify import _recipe_checkpoints, example, variant


def by_piece(result: object) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in result.drift:  # type: ignore[attr-defined]
        out.setdefault(row.piece, {})[row.step] = row.max_abs
    return out


def test_identical_resume_has_zero_drift_every_step() -> None:
    result = verify_resume(example("sgd_momentum_steplr"), steps=6, resume_at=3, fresh_process=False,
                           drift=True)
    assert result.status == "identical"
    pieces = by_piece(result)
    assert set(pieces) == {"model", "optimizer", "scheduler"}
    assert all(list(steps) == [4, 5, 6] and set(steps.values()) == {0.0} for steps in pieces.values())
    assert result.drift_note == "per-step drift from the resumed run"


@pytest.mark.parametrize("fresh", [False, True])
def test_missing_adam_state_drifts_from_the_resume_on(tmp_path: Path, fresh: bool) -> None:
    result = verify_resume(variant(tmp_path, "tutorial_mlp", "optimizer"), steps=8, resume_at=4,
                           fresh_process=fresh, drift=True)
    assert result.status == "diverged" and result.diverged_step == 4
    pieces = by_piece(result)
    assert list(pieces["model"]) == list(range(5, 9))
    model = list(pieces["model"].values())
    assert all(v > 0 for v in model) and model[-1] > model[0]  # the weights walk away
    assert all(v > 0 for v in pieces["optimizer"].values())
    assert ("replay" in result.drift_note) == fresh
    assert json.loads(json.dumps(result.to_dict()))["drift"][0] == {
        "step": 5, "piece": "model", "max_abs": model[0]}


def test_drift_matches_the_states_it_compares(tmp_path: Path) -> None:
    # checkpoints mode: the one point is NEXT's pieces against the resumed state, by hand
    ckpt, nxt = _recipe_checkpoints(tmp_path, "tutorial_mlp", 24, drop="optimizer")
    result = verify_resume(example("tutorial_mlp"), ckpt, nxt, drift=True)
    rows = {r.piece: r for r in result.drift}
    assert set(rows) == {"model", "optimizer"} and rows["model"].step == 25
    assert rows["model"].max_abs > 0 and "NEXT" in result.drift_note
    without = verify_resume(example("tutorial_mlp"), ckpt, nxt)
    assert without.drift == () and without.verdict == result.verdict


def test_max_abs_difference_of_real_states() -> None:
    model = torch.nn.Linear(3, 2)
    a = {"w": model.state_dict(), "n": 3}
    b = {"w": {k: v.clone() for k, v in model.state_dict().items()}, "n": 3}
    assert max_abs_difference(a, b) == 0.0
    b["w"]["bias"][1] += 0.25
    assert max_abs_difference(a, b) == pytest.approx(0.25)
    b["w"]["bias"][0] = float("nan")
    assert max_abs_difference(a, b) == float("inf")


def test_over_budget_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_mod, "BUDGET_BYTES", 1024)
    result = verify_resume(example("tutorial_mlp"), steps=6, resume_at=3, fresh_process=False, drift=True)
    assert result.drift == () and result.drift_note.startswith("no per-step drift: 3 copies")
