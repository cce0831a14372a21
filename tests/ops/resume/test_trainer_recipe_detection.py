"""The run mode tells a ``build_trainer`` recipe from a loop recipe by reading its source, without
importing it (so the loop recipes' fresh process can still be forked before torch loads)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ckpttools.ops.resume.trainer_run import declares_build_trainer

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("source", "expected"), [
    ("def build_trainer(output_dir):\n    return None\n", True),
    ("from mypkg.recipes import build_trainer\n", True),
    ("from mypkg.recipes import make as build_trainer\n", True),
    ("build_trainer = lambda output_dir: None\n", True),
    ("def build_model():\n    pass\n\ndef helper():\n    def build_trainer(d):\n        pass\n", False),
    ("def build_trainer(:\n", False),  # a syntax error: the import reports it later
], ids=["def", "import", "import-as", "assign", "nested-only", "syntax-error"])
def test_recipe_file(tmp_path: Path, source: str, expected: bool) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(source)
    assert declares_build_trainer(str(recipe)) is expected
    assert "recipe" not in sys.modules


def test_examples_and_module_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert declares_build_trainer(str(REPO / "examples" / "hf_trainer_recipe.py"))
    assert declares_build_trainer(str(REPO / "examples" / "lightning_recipe.py"))
    assert not declares_build_trainer(str(REPO / "examples" / "tutorial_mlp.py"))
    (tmp_path / "ckpt17_trainer_recipe.py").write_text("def build_trainer(output_dir):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert declares_build_trainer("ckpt17_trainer_recipe")
    assert "ckpt17_trainer_recipe" not in sys.modules  # read, never imported
    assert not declares_build_trainer("no_such_module_ckpt17")
