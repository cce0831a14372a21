"""Plans the shapes cannot decide: two moves fill as many model keys from different checkpoint
keys (a CLIP encoder saved alone fits the text and the vision tower alike; a layer like its
neighbours added to a ``Sequential`` may be any of them). The plan used to pick one of them, by
the order of a set, and load the tensors into the wrong places with a "proven" plan; it now
names the choices and shows no snippet or command. Where the shapes decide, the plan is shown
and loads the saved tensors into the right places (values compared, not only keys)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.ops.diff._case_checks import run_cli

SPEC = '''
import torch
from torch import nn

def seq(extra: bool = False, dropout: bool = False) -> nn.Sequential:
    torch.manual_seed(1)
    layers = [nn.Linear(8, 8), nn.ReLU()] + ([nn.Dropout()] if dropout else [])
    layers += [nn.Linear(8, 8), nn.ReLU()] if extra else []
    return nn.Sequential(*layers, nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

def clip():
    import transformers
    return transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        projection_dim=8))
'''


def _spec(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict[str, object] = {}
    exec(SPEC, namespace)
    return namespace


def _undecided(ckpt: Path, spec: str, *args: str) -> dict[str, object]:
    base = [str(ckpt), "--model", spec, *args]
    code, out = run_cli(["diff", *base, "--format", "json"])
    plan = json.loads(out)["plan"]
    assert code == 1 and plan.get("undecided"), plan
    assert not plan["steps"] and not plan["python"] and not plan["command"], plan
    _, text = run_cli(["diff", *base])
    assert "No fix plan" in text and all(f"- {u}" in text for u in plan["undecided"])
    code, out = run_cli(["diagnose", "--checkpoint", *base, "--format", "json"])
    diag = json.loads(out)
    assert code == 0 and diag["plan"] == plan
    assert all(not c["fix"]["code"] for c in diag["causes"]), diag["causes"]
    return plan


def test_a_layer_like_its_neighbours_added_to_a_sequential_is_undecided(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    torch.save(spec["seq"]().state_dict(), tmp_path / "seq.pth")  # type: ignore[operator]
    plan = _undecided(tmp_path / "seq.pth", f"{tmp_path / 'spec.py'}:seq", "-a", "extra=true")
    assert sorted(plan["undecided"]) == [  # type: ignore[arg-type]
        "the checkpoint's layers 0, 2, 4 are the model's 0, 2, 6",
        "the checkpoint's layers 0, 2, 4 are the model's 2, 4, 6"]


def test_a_layer_without_weights_added_is_a_proven_shift(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    saved = {k: torch.randn_like(v) for k, v in spec["seq"]().state_dict().items()}  # type: ignore[operator]
    torch.save(saved, tmp_path / "seq.pth")
    base = [str(tmp_path / "seq.pth"), "--model", f"{tmp_path / 'spec.py'}:seq", "-a", "dropout=true"]
    code, out = run_cli(["diff", *base, "--format", "json"])
    plan = json.loads(out)["plan"]
    assert code == 1 and plan["strict"] and not plan.get("undecided"), plan
    model: nn.Module = spec["seq"](dropout=True)  # type: ignore[operator]
    exec(compile(plan["python"], "<snippet>", "exec"), {"model": model})
    args = shlex.split(plan["command"])
    args[3] = str(tmp_path / "out.pth")
    assert run_cli(args[1:])[0] == 0
    remapped: nn.Module = spec["seq"](dropout=True)  # type: ignore[operator]
    remapped.load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True))
    moved = {"0": "0", "2": "3", "4": "5"}
    for key, value in saved.items():
        index, _, leaf = key.partition(".")
        target = f"{moved[index]}.{leaf}"
        assert torch.equal(model.state_dict()[target], value), target
        assert torch.equal(remapped.state_dict()[target], value), target


@pytest.mark.frameworks
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_an_encoder_that_fits_two_towers_is_undecided(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    spec = _spec(tmp_path)
    model = spec["clip"]()  # type: ignore[operator]
    # a tower's encoder saved alone (keys 'layers.0....'): text and vision encoders are alike
    torch.save(model.vision_model.encoder.state_dict(), tmp_path / "encoder.pth")
    plan = _undecided(tmp_path / "encoder.pth", f"{tmp_path / 'spec.py'}:clip")
    assert plan["undecided"] == ["add 'text_model.encoder.' in front of the keys",
                                 "add 'vision_model.encoder.' in front of the keys"]
    # the whole vision tower saved alone is decided by its embeddings: a plan, right tensors
    tower = model.vision_model.state_dict()
    torch.save(tower, tmp_path / "tower.pth")
    code, out = run_cli(["diff", str(tmp_path / "tower.pth"), "--model",
                         f"{tmp_path / 'spec.py'}:clip", "--format", "json"])
    plan = json.loads(out)["plan"]
    assert code == 1 and [s["kind"] for s in plan["steps"]] == ["add-prefix"], plan
    fresh = spec["clip"]()  # type: ignore[operator]
    exec(compile(plan["python"], "<snippet>", "exec"), {"model": fresh})
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded["vision_model." + k], v) for k, v in tower.items())
