"""Models built for metadata work: parameters on the meta device, no initialiser run, nothing
imported that a plain ``import torch`` does not import (``torch._dynamo`` costs 1-2 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from ckpttools.ops.meta_build import INIT_FUNCTIONS, meta_build
from ckpttools.ops.model_spec import build_model, signature_of_model

ROOT = Path(__file__).resolve().parents[2]

# Every common layer, plus an __init__ that writes its own weights three ways (a tensor method,
# torch.nn.init called directly, an initialiser bound at import) and computes a buffer.
SIX_LAYERS = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.nn.init import normal_ as bound_normal_


    class Six(nn.Module):
        def __init__(self, classes: int = 10):
            super().__init__()
            self.embed = nn.Embedding(100, 32, padding_idx=0)
            self.conv = nn.Conv1d(32, 32, 3, padding=1)
            self.bn = nn.BatchNorm1d(32)
            self.ln = nn.LayerNorm(32)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.head = nn.Linear(32, classes)
            self.head.weight.data.normal_(0, 0.02)
            torch.nn.init.trunc_normal_(self.embed.weight, std=0.02)
            bound_normal_(self.head.bias)
            inv = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
            self.register_buffer("inv_freq", inv, persistent=False)
            self.register_buffer("causal", torch.tril(torch.ones(8, 8, dtype=torch.bool)))
""")

# Runs the CLI commands one after the other in this fresh process (one torch import for all) and
# prints, for each, its exit code and the torch modules it imported beyond what ``import torch``
# and the commands before it imported.
PROBE = textwrap.dedent("""
    import json, sys
    import torch
    from ckpttools.cli.main import main
    report = []
    for argv in json.loads(sys.argv[1]):
        before = set(sys.modules)
        rc = main(argv)
        extra = sorted(m for m in set(sys.modules) - before if m.split(".")[0] == "torch")
        report.append({"command": argv[0], "rc": rc, "extra": extra})
    print(json.dumps(report))
""")


@pytest.fixture
def six(tmp_path: Path) -> tuple[Path, str]:
    """A checkpoint written by torch.save from the model built normally, and the model's spec."""
    source = tmp_path / "six.py"
    source.write_text(SIX_LAYERS)
    namespace: dict = {}
    exec(compile(SIX_LAYERS, str(source), "exec"), namespace)
    torch.manual_seed(0)
    ckpt = tmp_path / "six.pth"
    torch.save(namespace["Six"]().state_dict(), ckpt)
    return ckpt, f"{source}:Six"


def test_model_commands_import_nothing_beyond_import_torch(six: tuple[Path, str]) -> None:
    ckpt, spec = map(str, six)
    commands = [["diff", ckpt, "--model", spec],
                ["diagnose", "--checkpoint", ckpt, "--model", spec],
                ["audit", ckpt, "--model", spec]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # the checkpoint loads into the model: a clean verdict from each command
    assert [(r["command"], r["rc"]) for r in report] == [("diff", 0), ("diagnose", 0),
                                                         ("audit", 0)]
    for r in report:
        assert "torch._dynamo" not in r["extra"], r["command"]
        assert r["extra"] == [], r["command"]


def test_signature_is_the_one_of_the_model_built_normally(six: tuple[Path, str]) -> None:
    _, spec = six
    meta = build_model(spec)
    plain = build_model(spec, meta=False)
    assert signature_of_model(meta) == signature_of_model(plain)
    assert all(p.is_meta for p in meta.parameters())
    assert not any(p.is_meta for p in plain.parameters())
    # buffers are computed on CPU by the ordinary kernels, as accelerate's init_empty_weights does
    assert meta.inv_freq.tolist() == plain.inv_freq.tolist()


def test_initialisers_and_registration_come_back_after_the_build() -> None:
    originals = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    register = nn.Module.register_parameter
    with pytest.raises(ZeroDivisionError), meta_build():
        assert nn.init.normal_ is not originals["normal_"]
        nn.Linear(4, 4)
        raise ZeroDivisionError  # the build fails half-way
    assert {name: getattr(nn.init, name) for name in INIT_FUNCTIONS} == originals
    assert nn.Module.register_parameter is register
    weight = nn.Linear(64, 64).weight  # initialisers run again outside the build
    assert float(weight.detach().abs().sum()) > 0 and not weight.is_meta


def test_ties_survive() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.embed.weight

    with meta_build():
        model = Tied()
    assert model.lm_head.weight is model.embed.weight and model.embed.weight.is_meta
    assert signature_of_model(model).ties == (("embed.weight", "lm_head.weight"),)
    assert isinstance(model.embed.weight, nn.Parameter) and model.embed.weight.requires_grad


def test_writes_on_real_tensors_still_happen_inside_the_build() -> None:
    with meta_build():
        table = torch.zeros(3)
        table.add_(2)  # a CPU tensor: its values are real and kept
        table.normal_()
    assert table.device.type == "cpu" and table.tolist() != [2.0, 2.0, 2.0]


class TaggedParameter(nn.Parameter):
    """A Parameter subclass that carries an attribute, as sharding libraries' parameters do."""


def test_parameter_subclasses_and_their_attributes_survive() -> None:
    class Sharded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            weight = TaggedParameter(torch.empty(8, 4), requires_grad=False)
            weight.shard_dim = 0
            self.weight = weight

    with meta_build():
        model = Sharded()
    assert type(model.weight) is TaggedParameter and model.weight.is_meta
    assert model.weight.shard_dim == 0 and model.weight.requires_grad is False
