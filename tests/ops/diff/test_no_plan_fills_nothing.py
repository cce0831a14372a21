"""A plan of drops alone loads nothing: before, a PEFT adapter's own file diffed against the bare
base model got a "Fix plan" that dropped its four LoRA matrices and loaded none of the model's
keys, with a remap command that wrote an empty file. Now no plan is shown: the report says the
checkpoint fills none of the model's keys and what to do instead, and the hint is run here."""

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

def qwen():
    import transformers
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))

def conv():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
'''


def _plan(ckpt: Path, spec: str) -> tuple[int, dict, str]:
    code, out = run_cli(["diff", str(ckpt), "--model", spec, "--format", "json"])
    text = run_cli(["diff", str(ckpt), "--model", spec])[1]
    return code, json.loads(out)["plan"], text


@pytest.mark.frameworks
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_a_lora_adapter_alone_gets_no_plan_and_the_peft_hint_loads_it(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    (tmp_path / "spec.py").write_text(SPEC)
    ns: dict[str, object] = {}
    exec(SPEC, ns)
    tuned = peft.get_peft_model(ns["qwen"](), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # type: ignore[operator]
    for name, p in tuned.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p)
    tuned.save_pretrained(tmp_path / "adapter")
    code, plan, text = _plan(tmp_path / "adapter" / "adapter_model.safetensors", f"{tmp_path / 'spec.py'}:qwen")
    assert code == 1 and plan["no_plan"] and not plan["steps"] and not plan["python"], plan
    assert plan["command"] is None and plan["filled"] == 0
    assert "No fix plan: no rename or drop makes the checkpoint fill any" in text
    assert "Fix plan (" not in text and "remap:" not in text
    # the hint, as printed, loads the adapter onto the base model
    assert "peft.PeftModel.from_pretrained(model, ADAPTER_FOLDER)" in plan["no_plan_hint"]
    model = ns["qwen"]()  # type: ignore[operator]
    hint = plan["no_plan_hint"].split("then ", 1)[1].replace("ADAPTER_FOLDER", repr(str(tmp_path / "adapter")))
    loaded = eval(hint, {"peft": peft, "model": model})
    want = {k: v for k, v in tuned.state_dict().items() if "lora_" in k}
    got = loaded.state_dict()
    assert want and all(torch.equal(got[k], v) for k, v in want.items())


def test_another_models_file_gets_no_plan(tmp_path: Path) -> None:
    (tmp_path / "spec.py").write_text(SPEC)
    other = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save({f"encoder.{k}": v for k, v in other.state_dict().items()}, tmp_path / "other.pth")
    code, plan, text = _plan(tmp_path / "other.pth", f"{tmp_path / 'spec.py'}:conv")
    assert code == 1 and plan["no_plan"] and plan["filled"] == 0 and not plan["steps"], plan
    assert "remap:" not in text
    # the command it prints runs and shows the other model's keys
    command = shlex.split(plan["no_plan_hint"].rsplit(" with ", 1)[1])
    assert command[:2] == ["ckpttools", "inspect"]
    code, out = run_cli(command[1:])
    assert code == 0 and "encoder.0.weight" in out


def test_a_file_that_fills_some_keys_keeps_its_plan(tmp_path: Path) -> None:
    (tmp_path / "spec.py").write_text(SPEC)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    torch.save({**model.state_dict(), "head.weight": torch.ones(2, 4)}, tmp_path / "extra.pth")
    code, plan, _ = _plan(tmp_path / "extra.pth", f"{tmp_path / 'spec.py'}:conv")
    assert code == 1 and not plan["no_plan"] and plan["strict"], plan
    assert [s["kind"] for s in plan["steps"]] == ["drop"]
