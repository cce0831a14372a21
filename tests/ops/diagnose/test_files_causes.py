"""Causes from files, where the shapes and the model's own structure are evidence a text lacks."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import save_model
from torch import nn

from ckpttools.cli.main import cli


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight


def test_tied_alias_left_out_by_safetensors_is_named(tmp_path: Path) -> None:
    """Not "no known cause fits": the model's own tie (its parameters share one tensor) says it."""
    path = tmp_path / "lm.safetensors"
    saved = TiedLM()
    save_model(saved, str(path))  # safetensors keeps one name of a shared tensor
    spec = f"{__file__}:TiedLM"
    r = CliRunner().invoke(cli, ["diagnose", "--checkpoint", str(path), "--model", spec,
                                 "--format", "json"])
    data = json.loads(r.stdout)
    first = data["causes"][0]
    assert first["label"] == "tied_weights" and first["confidence"] >= 0.8
    absent = set(first["evidence"]["examples"])
    assert len(absent) == 1 and absent <= {"embed.weight", "head.weight"}
    assert r.exit_code == 0
    # the fix shown is the plan's, and it loads strictly with the saved values
    model = TiedLM()
    exec(first["fix"]["code"], {"model": model})
    assert torch.equal(model.head.weight, saved.head.weight)
    assert model.head.weight is model.embed.weight
    # with --allow-tied the absent alias is accepted: nothing to diagnose
    r = CliRunner().invoke(cli, ["diagnose", "--checkpoint", str(path), "--model", spec,
                                 "--allow-tied", "--format", "json"])
    assert json.loads(r.stdout)["causes"] == []


class Features(nn.Module):
    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), *([nn.GroupNorm(2, 8)] if norm else []),
                  nn.ReLU(), nn.Conv2d(8, 8, 3)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(8, 4)


def test_moved_layer_is_named_by_its_shapes(tmp_path: Path) -> None:
    """A norm inserted before a conv moves the conv from index 3 to 4; the new norm at 2 shares
    the conv's bias shape only. The moves told are the plan's (3 -> 4), not 3 -> 2."""
    path = tmp_path / "net.pth"
    torch.save(Features().state_dict(), path)
    r = CliRunner().invoke(cli, ["diagnose", "--checkpoint", str(path), "--model",
                                 f"{__file__}:Features", "-a", "norm=true", "--format", "json"])
    data = json.loads(r.stdout)
    cause = data["causes"][0]
    assert cause["label"] == "model_code_changed"
    assert "'features.3.weight' -> 'features.4.weight'" in cause["summary"]
    assert "features.2" not in cause["summary"]
    assert data["plan"]["steps"][0]["args"] == [r"^features\.3\.=features.4."]
