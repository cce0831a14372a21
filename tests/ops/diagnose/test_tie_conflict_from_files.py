"""``diagnose --checkpoint`` of a checkpoint saved untied, loaded into a model that ties the same
two parameters: every key matches and ``load_state_dict(strict=True)`` succeeds, but the one shared
parameter keeps the last key's tensor and the other is lost. ``diff --model`` says so
(``tie_conflicts``); diagnose said "no known cause fits". Now its first cause is the tie, read from
the tensors' values, with the way out (build the model untied) and the command that confirms it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.cli.main import cli


class TinyLM(nn.Module):
    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16, bias=False)
        if tie:
            self.head.weight = self.embed.weight


def untied() -> TinyLM:
    return TinyLM(tie=False)


def _diagnose(path: Path, factory: str) -> tuple[int, dict, str]:
    args = ["diagnose", "--checkpoint", str(path), "--model", f"{__file__}:{factory}"]
    r = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, json.loads(r.stdout), CliRunner().invoke(cli, args).stdout


def test_untied_weights_into_a_tying_model_name_the_tie(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = untied()
    torch.save(saved.state_dict(), tmp_path / "untied.pth")
    model = TinyLM()
    model.load_state_dict(torch.load(tmp_path / "untied.pth"))  # what the user saw: no error ...
    assert not torch.equal(model.embed.weight, saved.embed.weight)  # ... and the embedding lost

    code, data, text = _diagnose(tmp_path / "untied.pth", "TinyLM")
    first = data["causes"][0]
    assert code == 0 and data["found"], data  # 0: a cause was found
    assert first["label"] == "tied_weights" and first["confidence"] >= 0.9, first
    assert first["evidence"]["facts"]["tie_conflicts"] == [["embed.weight", "head.weight"]]
    assert "build the model untied" in first["summary"] and "no known cause fits" not in text
    # the confirming command it prints runs and says the load loses weights
    confirm = shlex.split(first["fix"]["confirm"])
    assert confirm[:2] == ["ckpttools", "diff"]
    r = CliRunner().invoke(cli, confirm[1:])
    assert r.exit_code == 1 and "strict load would succeed but lose weights" in r.stdout, r.output
    # the way out it names loads every tensor as saved
    fixed = untied()
    fixed.load_state_dict(torch.load(tmp_path / "untied.pth"))
    assert torch.equal(fixed.embed.weight, saved.embed.weight) and torch.equal(fixed.head.weight, saved.head.weight)


def test_a_tied_save_into_a_tying_model_is_clean(tmp_path: Path) -> None:
    torch.save(TinyLM().state_dict(), tmp_path / "tied.pth")
    code, data, _ = _diagnose(tmp_path / "tied.pth", "TinyLM")
    assert code == 0 and not data["found"] and not data["causes"], data
