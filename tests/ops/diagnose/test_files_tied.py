"""From files, a tied parameter the checkpoint stores once is the cause ``tied_weights``, not
"no known cause fits": the model's own tie is the evidence (its parameters share one tensor)."""

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
