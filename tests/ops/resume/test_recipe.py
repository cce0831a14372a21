"""Loading and validating recipes; reading checkpoints with numpy RNG state under weights_only."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ckpttools.errors import CorruptCheckpointError, SpecError, UnsafeCheckpointError
from ckpttools.ops.resume.recipe import (
    build_objects, capture_state, load_recipe, missing_pieces, read_checkpoint, run_step,
)
from tests.conftest import malicious_state
from tests.ops.resume.recipes import write_recipe

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
LINEAR = str(EXAMPLES / "tutorial_linear.py")

FULL = """
import torch
def build_model(): return torch.nn.Linear(1, 1)
def build_optimizer(model): return torch.optim.SGD(model.parameters(), lr=0.1)
def batch(i): return torch.ones(2, 1)
def loss(model, batch): return model(batch).sum()
"""


def test_loads_example_by_path() -> None:
    recipe = load_recipe(LINEAR)
    assert recipe.pieces() == ("optimizer", "rng")
    objs = build_objects(recipe)
    assert isinstance(run_step(recipe, objs, 0), float)


def test_loads_module_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ckpttools_test_recipe_pkg").mkdir()
    (tmp_path / "ckpttools_test_recipe_pkg" / "__init__.py").write_text("")
    write_recipe(tmp_path / "ckpttools_test_recipe_pkg", FULL, "train.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = load_recipe("ckpttools_test_recipe_pkg.train")
    assert recipe.name == "ckpttools_test_recipe_pkg.train" and recipe.fn("loss") is not None


@pytest.mark.parametrize("missing, message", [
    ("build_model", "recipe has no build_model()"),
    ("build_optimizer", "recipe has no build_optimizer(model)"),
    ("batch", "recipe has no batch(i)"),
    ("loss", "neither loss(model, batch) nor train_step"),
])
def test_missing_function_is_named(tmp_path: Path, missing: str, message: str) -> None:
    text = "\n".join(line for line in FULL.splitlines() if not line.startswith(f"def {missing}("))
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(write_recipe(tmp_path, text))


def test_missing_function_on_object() -> None:
    with pytest.raises(SpecError, match=r"recipe has no build_model\(\)"):
        load_recipe(object())


@pytest.mark.parametrize("spec, message", [
    ("no/such/recipe.py", "recipe file not found"),
    ("no_such_package_xyz.recipe", "cannot import recipe"),
])
def test_unimportable_recipe(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_recipe(spec)


def test_recipe_that_raises_on_import(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="recipe failed to import: ZeroDivisionError"):
        load_recipe(write_recipe(tmp_path, "x = 1 / 0\n"))


def test_recipe_function_error_is_one_line(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, FULL.replace("return torch.nn.Linear(1, 1)", "raise ValueError('bad')")))
    with pytest.raises(SpecError, match=r"build_model\(\) raised ValueError: bad"):
        build_objects(recipe)


def test_numpy_rng_state_loads_under_weights_only(tmp_path: Path) -> None:
    import numpy as np
    import torch

    recipe = load_recipe(LINEAR)
    np.random.seed(7)
    state = capture_state(build_objects(recipe), 0, None)
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    loaded = read_checkpoint(recipe, str(path))
    kind, keys, pos, *_ = loaded["rng_state"]["numpy"]
    assert kind == "MT19937" and isinstance(keys, np.ndarray) and keys.dtype == np.uint32
    assert np.array_equal(keys, np.random.get_state()[1]) and pos == np.random.get_state()[2]
    assert loaded["rng_state"]["python"] == random.getstate()
    assert missing_pieces(recipe, loaded) == ()


def test_unsafe_checkpoint_refused(tmp_path: Path, canary: Path) -> None:
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": malicious_state(canary)}, path)
    with pytest.raises(UnsafeCheckpointError, match="rerun with --trust"):
        read_checkpoint(load_recipe(LINEAR), str(path))


def test_checkpoint_that_is_not_a_dict(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CorruptCheckpointError, match="not a dict of state"):
        read_checkpoint(load_recipe(LINEAR), str(path))


def test_recipe_load_checkpoint_is_used(tmp_path: Path) -> None:
    text = FULL + "def load_checkpoint(path):\n    return {'from': 'recipe'}\n"
    ckpt = tmp_path / "any.bin"
    ckpt.write_bytes(b"not a torch file")
    assert read_checkpoint(load_recipe(write_recipe(tmp_path, text)), str(ckpt)) == {"from": "recipe"}
