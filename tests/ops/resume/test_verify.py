"""verify_resume on the example recipes and deliberately broken variants, in both modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ckpttools.errors import CorruptCheckpointError, SpecError
from ckpttools.ops.resume.recipe import build_objects, capture_state, load_recipe, run_step, seed_all
from ckpttools.api import verify_resume
from ckpttools.ops.resume.verify import ResumeResult

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
KEYS = {"optimizer": "optimizer_state_dict", "scheduler": "scheduler_state_dict",
        "scaler": "scaler_state_dict", "rng": "rng_state"}


def example(name: str) -> str:
    return str(EXAMPLES / f"{name}.py")


def variant(tmp_path: Path, name: str, drop: str, extra: str = "") -> str:
    """A recipe file: the example ``name`` whose checkpoints leave out the piece ``drop``."""
    path = tmp_path / f"{name}_no_{drop}.py"
    path.write_text(
        "import runpy\n"
        f"globals().update({{k: v for k, v in runpy.run_path({example(name)!r}).items()"
        " if not k.startswith('__')})\n"
        "def save_checkpoint(path, state):\n"
        "    import torch\n"
        f"    torch.save({{k: v for k, v in state.items() if k != {KEYS[drop]!r}}}, path)\n" + extra)
    return str(path)


def run(recipe: str, steps: int, resume_at: int, **kwargs: Any) -> ResumeResult:
    return verify_resume(recipe, steps=steps, resume_at=resume_at, fresh_process=False, **kwargs)


def explaining(result: ResumeResult) -> list[str]:
    return [a.piece for a in result.attributions if a.explains]


@pytest.mark.parametrize("name, steps, resume_at", [
    ("tutorial_linear", 5, 3), ("tutorial_mlp", 40, 24), ("mlp_dropout", 6, 3),
    ("sgd_momentum_steplr", 6, 3), ("onecycle", 8, 4), ("grad_scaler_cpu", 8, 4),
])
def test_examples_resume_bitwise(name: str, steps: int, resume_at: int) -> None:
    result = run(example(name), steps, resume_at)
    assert result.ok and result.status == "identical", result.verdict
    assert result.verdict.startswith(f"bitwise identical: resuming after step {resume_at}")
    assert result.missing == () and result.attributions == ()
    assert [r.step for r in result.losses] == list(range(steps))
    assert all(d.status == "identical" for d in (*result.first_step_diffs, *result.final_diffs))
    json.dumps(result.to_dict())


@pytest.mark.parametrize("name, drop, steps, resume_at, words", [
    ("tutorial_mlp", "optimizer", 30, 24, ["no optimizer state", "exp_avg"]),
    ("tutorial_mlp", "rng", 26, 24, ["no RNG state", "RNG state after the resume"]),
    ("mlp_dropout", "rng", 6, 3, ["no RNG state", "uses dropout", "differs from step 3"]),
    ("sgd_momentum_steplr", "optimizer", 6, 3, ["no optimizer state", "momentum_buffer"]),
    ("sgd_momentum_steplr", "scheduler", 6, 3, ["no scheduler state"]),
    ("onecycle", "scheduler", 8, 4, ["no scheduler state"]),
    ("grad_scaler_cpu", "scaler", 8, 4, ["no GradScaler state"]),
])
def test_missing_piece_is_named(tmp_path: Path, name: str, drop: str, steps: int, resume_at: int,
                                words: list[str]) -> None:
    result = run(variant(tmp_path, name, drop), steps, resume_at)
    assert not result.ok and result.status == "diverged"
    assert result.diverged_step == resume_at  # the state after the first resumed step already differs
    assert result.missing == (drop,)
    assert explaining(result) == [drop]
    assert result.verdict.startswith(f"diverged at step {resume_at}: the checkpoint has no")
    for word in words:
        assert word in result.verdict
    present = [a for a in result.attributions if a.in_checkpoint]
    assert present and not any(a.explains for a in present)


def test_missing_optimizer_state_harmless_for_plain_sgd(tmp_path: Path) -> None:
    result = run(variant(tmp_path, "tutorial_linear", "optimizer"), 5, 3)
    assert result.ok and result.status == "identical"
    assert "no optimizer state (it made no difference here)" in result.verdict
    (attribution,) = result.attributions
    assert attribution.piece == "optimizer" and attribution.matters is False
    assert "keeps no per-parameter state" in attribution.note


def test_missing_rng_with_dropout_in_fresh_process(tmp_path: Path) -> None:
    result = verify_resume(variant(tmp_path, "mlp_dropout", "rng"), steps=5, resume_at=3)
    assert result.fresh_process and not result.ok and explaining(result) == ["rng"]
    assert result.losses[3].status == "differs"


def test_tutorial_linear_in_fresh_process(tmp_path: Path) -> None:
    result = verify_resume(example("tutorial_linear"), steps=5, resume_at=3, workdir=str(tmp_path))
    assert result.fresh_process and result.status == "identical"


def test_nondeterministic_step_gets_a_hint(tmp_path: Path) -> None:
    noisy = tmp_path / "noisy.py"
    noisy.write_text(
        f"import pathlib\nexec(pathlib.Path({example('tutorial_linear')!r}).read_text())\n"
        "import random as _random\n"
        "_loss = loss\n"
        "def loss(model, batch):\n"
        "    return _loss(model, batch) * (1 + 1e-3 * _random.SystemRandom().random())\n")
    result = run(str(noisy), 5, 3)
    assert not result.ok and not explaining(result)
    assert any("use_deterministic_algorithms" in h for h in result.hints)
    assert "nondeterministic" in result.verdict


def _tutorial_checkpoints(tmp_path: Path, at: tuple[int, ...] = (3, 4)) -> list[Path]:
    """Train the tutorial by hand, as its users do, saving ``epoch`` and no RNG state."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    paths = []
    for epoch in range(max(at)):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), 2 * x)
        loss.backward()
        optimizer.step()
        if epoch + 1 in at:
            paths.append(tmp_path / f"ckpt_{epoch + 1}.pt")
            torch.save({"epoch": epoch + 1, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict(), "loss": loss.item()}, paths[-1])
    return paths


def test_checkpoint_pair_from_tutorial_loop(tmp_path: Path) -> None:
    ckpt, nxt = _tutorial_checkpoints(tmp_path)
    result = verify_resume(example("tutorial_linear"), str(ckpt), str(nxt))
    assert result.mode == "checkpoints" and result.status == "identical", result.verdict
    assert (result.resume_step, result.end_step) == (3, 4)
    assert result.losses[-1].reference == result.losses[-1].resumed
    assert result.missing == ("rng",) and "no RNG state (it made no difference here)" in result.verdict


def test_checkpoint_pair_several_steps_apart(tmp_path: Path) -> None:
    ckpt, nxt = _tutorial_checkpoints(tmp_path, (2, 5))
    result = verify_resume(example("tutorial_linear"), str(ckpt), str(nxt))
    assert result.status == "identical" and [r.step for r in result.losses] == [2, 3, 4]


def _recipe_checkpoints(tmp_path: Path, name: str, at: int, drop: str | None = None) -> tuple[str, str]:
    import torch

    recipe = load_recipe(example(name))
    seed_all(0)
    objs = build_objects(recipe)
    loss = None
    for i in range(at):
        loss = run_step(recipe, objs, i)
    state = capture_state(objs, at, loss)
    if drop:
        del state[KEYS[drop]]
    torch.save(state, tmp_path / "a.pt")
    torch.save(capture_state(objs, at + 1, run_step(recipe, objs, at)), tmp_path / "b.pt")
    return str(tmp_path / "a.pt"), str(tmp_path / "b.pt")


def test_checkpoint_pair_without_adam_state(tmp_path: Path) -> None:
    ckpt, nxt = _recipe_checkpoints(tmp_path, "tutorial_mlp", 24, drop="optimizer")
    result = verify_resume(example("tutorial_mlp"), ckpt, nxt)
    assert result.status == "diverged" and result.diverged_step == 24
    assert explaining(result) == ["optimizer"] and "exp_avg" in result.verdict


def test_checkpoint_pair_with_rng_and_dropout(tmp_path: Path) -> None:
    ckpt, nxt = _recipe_checkpoints(tmp_path, "mlp_dropout", 3)
    assert verify_resume(example("mlp_dropout"), ckpt, nxt).status == "identical"
    ckpt, nxt = _recipe_checkpoints(tmp_path, "mlp_dropout", 3, drop="rng")
    result = verify_resume(example("mlp_dropout"), ckpt, nxt)
    assert result.status == "diverged" and explaining(result) == ["rng"]
    assert "uses dropout" in result.verdict


def test_atol_accepts_small_differences(tmp_path: Path) -> None:
    import torch

    ckpt, nxt = _recipe_checkpoints(tmp_path, "sgd_momentum_steplr", 3)
    state = torch.load(nxt, weights_only=False)
    state["model_state_dict"]["0.weight"] += 1e-7
    torch.save(state, nxt)
    strict = verify_resume(example("sgd_momentum_steplr"), ckpt, nxt)
    assert strict.status == "diverged" and "model_state_dict.0.weight" in strict.verdict
    loose = verify_resume(example("sgd_momentum_steplr"), ckpt, nxt, atol=1e-6)
    assert loose.status == "within_tolerance" and loose.ok


def test_checkpoint_without_model_state(tmp_path: Path) -> None:
    import torch

    torch.save({"step": 1}, tmp_path / "a.pt")
    torch.save({"step": 2, "model_state_dict": {}}, tmp_path / "b.pt")
    with pytest.raises(CorruptCheckpointError, match="has no 'model_state_dict'"):
        verify_resume(example("tutorial_linear"), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))


def test_next_checkpoint_must_be_later(tmp_path: Path) -> None:
    ckpt, nxt = _tutorial_checkpoints(tmp_path)
    with pytest.raises(SpecError, match="is not after"):
        verify_resume(example("tutorial_linear"), str(nxt), str(ckpt))


def test_bad_arguments() -> None:
    with pytest.raises(SpecError, match="--resume-at 5 must be"):
        verify_resume(example("tutorial_linear"), steps=5, resume_at=5)
    with pytest.raises(SpecError, match="give CKPT and NEXT"):
        verify_resume(example("tutorial_linear"), steps=5)


@pytest.mark.parametrize("name, steps, resume_at", [("tutorial_mlp", 26, 24), ("sgd_momentum_steplr", 6, 3)])
def test_via_safetensors_loses_nothing(name: str, steps: int, resume_at: int) -> None:
    result = run(example(name), steps, resume_at, via="safetensors")
    assert result.status == "identical" and result.via == "safetensors", result.verdict
    assert any(d.key == "rng_state.numpy.1" and d.status == "identical" for d in result.final_diffs)


def test_via_safetensors_still_attributes(tmp_path: Path) -> None:
    result = run(variant(tmp_path, "sgd_momentum_steplr", "optimizer"), 6, 3, via="safetensors")
    assert result.status == "diverged" and explaining(result) == ["optimizer"]


def test_fresh_process_error_comes_back_as_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "only_here.py"
    recipe.write_text(
        f"import pathlib, sys\nexec(pathlib.Path({example('tutorial_linear')!r}).read_text())\n"
        "if sys.argv[0] == '-c':\n    raise RuntimeError('needs a GPU')\n")
    with pytest.raises(SpecError, match="recipe failed to import: RuntimeError: needs a GPU"):
        verify_resume(str(recipe), steps=3, resume_at=1)


def test_fresh_process_needs_a_spec() -> None:
    import types

    namespace = types.SimpleNamespace(**vars(load_recipe(example("tutorial_linear")).namespace))
    with pytest.raises(SpecError, match="needs a recipe spec"):
        verify_resume(namespace, steps=3, resume_at=1)
    assert verify_resume(namespace, steps=3, resume_at=1, fresh_process=False).ok
