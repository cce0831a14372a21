"""Specs import from the working folder the same way for models and recipes; help text details;
inspect's folding of repeated layers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.cli.main import cli

MODELS = """
from torch import nn
from mypkg.parts import width


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(width(), 2)
"""

RECIPE = """
import torch
from torch import nn
from mypkg.parts import width


def build_model():
    torch.manual_seed(0)
    return nn.Linear(width(), 1)


def build_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def batch(i):
    return torch.ones(2, width()), torch.zeros(2, 1)


def loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user's project: a package beside the checkpoint, run from the project folder."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "parts.py").write_text("def width():\n    return 3\n")
    (pkg / "models.py").write_text(MODELS)
    (pkg / "recipe.py").write_text(RECIPE)
    torch.manual_seed(0)
    torch.save({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}, tmp_path / "model.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "unrelated"))  # sys.path is restored after the test
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]  # the next test imports its own project


@pytest.mark.parametrize("spec", ["mypkg.models:Net", "mypkg/models.py:Net"])
def test_model_spec_imports_from_the_working_folder(runner: CliRunner, project: Path, spec: str) -> None:
    result = runner.invoke(cli, ["diff", "model.pth", "--model", spec])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("OK strict load would succeed")


@pytest.mark.parametrize("spec", ["mypkg.recipe", "mypkg/recipe.py"])
def test_recipe_spec_imports_the_same_way(runner: CliRunner, project: Path, spec: str) -> None:
    result = runner.invoke(cli, ["verify-resume", "--recipe", spec, "--steps", "3", "--resume-at", "1",
                                 "--in-process", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "identical"


def test_unknown_module_says_where_it_looked(runner: CliRunner, project: Path) -> None:
    result = runner.invoke(cli, ["diff", "model.pth", "--model", "otherpkg.models:Net"])
    assert result.exit_code == 2
    assert result.stderr.startswith("ckpttools: error: otherpkg.models:Net: cannot import model spec")
    assert "run from the folder that holds it" in result.stderr


def test_convert_help_keeps_options_whole(runner: CliRunner) -> None:
    text = runner.invoke(cli, ["convert", "--help"], terminal_width=60).stdout
    assert "--no-verify" in text.replace("\n", " ") and "--no-\n" not in text


def test_verify_resume_help_describes_the_recipe(runner: CliRunner) -> None:
    text = runner.invoke(cli, ["verify-resume", "--help"]).stdout
    for name in ("build_model()", "build_optimizer(model)", "batch(i)", "loss(model, batch)",
                 "train_step(model, optimizer, scheduler, batch)", "load_checkpoint(path)",
                 "model_state_dict", "rng_state"):
        assert name in text, name


def test_diagnose_of_a_checkpoint_points_to_checkpoint_option(runner: CliRunner, project: Path) -> None:
    result = runner.invoke(cli, ["diagnose", "model.pth"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("ckpttools: error: model.pth: a checkpoint, not the text of an error; diagnose "
                             "it with ckpttools diagnose --checkpoint model.pth --model SPEC\n")


class Features(nn.Module):
    """A conv/BatchNorm stack (not repeated layers) followed by three identical blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 2)


def test_inspect_folds_only_repeated_layers_in_file_order(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "features.pth"
    torch.save(Features().state_dict(), path)
    result = runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.split("Tensors\n")[1].splitlines()[2:] if line.strip()]
    keys = [r[0] for r in rows if "." in r[0]]
    # features.0 (conv) and features.1 (BatchNorm) share a bias shape but are not one layer repeated
    assert keys[:2] == ["features.0.weight", "features.0.bias"]
    assert "features.{0..1}.bias" not in result.stdout
    assert keys.index("features.3.weight") < keys.index("blocks.{0..2}.weight") < keys.index("head.weight")
    folded = next(r for r in rows if r[0] == "blocks.{0..2}.weight")
    # numel and size both per item (shape [8, 8]: 64 elements, 256 bytes), the count says x3
    assert folded[-3:] == ["64", "256", "B"] or folded[-4:] == ["64", "256", "B", "x3"]
    assert "tensor," not in result.stdout and "tensors," in result.stdout  # 13 tensors


def test_counts_and_articles_read_right(runner: CliRunner, tmp_path: Path) -> None:
    from ckpttools.units import plural, with_article

    assert (plural(1, "tensor"), plural(2, "tensor"), plural(0, "file")) == ("1 tensor", "2 tensors", "0 files")
    assert [with_article(w) for w in ("argparse.Namespace", "dict", "uint8", "OrderedDict")] == [
        "an argparse.Namespace", "a dict", "a uint8", "an OrderedDict"]
    path = tmp_path / "one.pth"
    torch.save({"w": torch.zeros(2)}, path)
    assert "\n1 tensor, 2 elements (2), 8 B" in runner.invoke(cli, ["inspect", str(path)]).stdout
    assert "1 pickle, only globals" in runner.invoke(cli, ["audit", str(path)]).stdout
