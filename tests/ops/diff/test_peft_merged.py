"""A LoRA fine-tune merged into its base (``merge_and_unload``) and saved, loaded back into the
PEFT-wrapped model: PEFT moves each adapted layer's weight under ``base_layer``. Shapes cannot
tell ``q_proj`` from ``k_proj``, and ``q_proj.base_layer`` is less like ``q_proj`` by likeness of
text than ``k_proj`` is, so no attention layer was paired: the plan dropped every attention
weight as one "the model does not have" and left them all initialised. The names decide
(``q_proj.base_layer`` is ``q_proj`` with a part added); values are compared, not only keys."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from tests.ops.diff._case_checks import run_cli

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

SPEC = '''
import torch

def lora_llama():
    import peft, transformers
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    return peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
'''


def test_merged_weights_load_under_base_layer_in_the_peft_model(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict[str, object] = {}
    exec(SPEC, namespace)
    tuned = namespace["lora_llama"]()  # type: ignore[operator]
    for name, p in tuned.named_parameters():
        if "lora_B" in name:  # a trained adapter: merging changes q_proj and v_proj
            torch.nn.init.normal_(p)
    merged = {k: v.clone() for k, v in tuned.merge_and_unload().state_dict().items()}
    torch.save(merged, tmp_path / "merged.pth")
    code, out = run_cli(["diff", str(tmp_path / "merged.pth"), "--model",
                         f"{tmp_path / 'spec.py'}:lora_llama", "--format", "json"])
    plan = json.loads(out)["plan"]
    assert code == 1 and not plan.get("undecided"), plan
    # only the adapter's own matrices are left; every merged weight is loaded
    assert all(".lora_A." in k or ".lora_B." in k for k in plan["left_initialised"]), plan
    assert not any(s["kind"] == "drop" for s in plan["steps"]), plan["steps"]
    model = namespace["lora_llama"]()  # type: ignore[operator]
    exec(compile(plan["python"], "<snippet>", "exec"), {"model": model})
    args = shlex.split(plan["command"])
    args[3] = str(tmp_path / "out.pth")
    assert run_cli(args[1:])[0] == 0
    remapped = namespace["lora_llama"]()  # type: ignore[operator]
    remapped.load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True), strict=False)
    for loaded in (model.state_dict(), remapped.state_dict()):
        for key, value in loaded.items():
            if ".lora_" in key:
                continue
            source = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
            assert torch.equal(value, merged[source]), key
