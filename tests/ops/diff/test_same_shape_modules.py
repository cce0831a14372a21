"""Modules of one signature (a ViT's query, key, value and output projections; its two layer
norms) renamed between a checkpoint and a model: shapes cannot pair them, so the plan pairs
them by name or leaves them unmatched, never in order (which loaded ``key`` into ``q_proj``).

transformers 5 writes a ViT's legacy names (``attention.attention.key``) and builds the new
ones (``attention.k_proj``); its own ``from_pretrained`` knows the true mapping, the reference."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.ops.diff._case_checks import run_cli

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

SPEC = '''
import transformers

def vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=8, patch_size=4, num_labels=3))
'''


def test_plan_never_loads_one_projection_into_another(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict[str, object] = {}
    exec(SPEC, namespace)
    torch.manual_seed(0)
    namespace["vit"]().save_pretrained(tmp_path / "vit")  # type: ignore[operator]
    reference = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit").state_dict()
    saved = safetensors.torch.load_file(tmp_path / "vit" / "model.safetensors")
    if "vit.encoder.layer.0.attention.attention.key.weight" not in saved or \
            "vit.layers.0.attention.k_proj.weight" not in reference:
        pytest.skip("this transformers writes the names it builds")
    code, out = run_cli(["diff", str(tmp_path / "vit" / "model.safetensors"),
                         "--model", f"{tmp_path / 'spec.py'}:vit", "--format", "json"])
    plan = json.loads(out)["plan"]
    assert code == 1 and plan["command"], plan
    done, _ = run_cli(shlex.split(plan["command"])[1:])
    assert done == 0
    fixed = safetensors.torch.load_file(tmp_path / "vit" / "model-fixed.safetensors")
    # every tensor the plan loads is the one transformers loads under that name
    wrong = [k for k, v in fixed.items() if not torch.equal(v, reference[k])]
    assert not wrong, wrong
