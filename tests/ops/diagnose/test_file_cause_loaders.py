"""``diagnose --checkpoint`` on a ``save_pretrained`` folder (or its safetensors file): a
cause's own fix loads the state_dict the way its format needs. It printed
``torch.load("folder")`` (IsADirectoryError) or ``torch.load`` of a safetensors file, and
named the folder's weights file "a whole training checkpoint" with ``torch.load("folder")`` too."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from tests.ops.diff._case_checks import run_cli

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

SPEC = '''
import transformers

def gpt2(tie=False):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
        eos_token_id=0, tie_word_embeddings=tie))
'''


@pytest.mark.parametrize("member", ["", "model.safetensors"])
def test_tied_head_fix_runs_on_a_pretrained_folder(tmp_path: Path, member: str) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict[str, object] = {}
    exec(SPEC, namespace)
    torch.manual_seed(0)
    namespace["gpt2"](tie=True).save_pretrained(tmp_path / "gpt2")  # type: ignore[operator]
    path = tmp_path / "gpt2" / member if member else tmp_path / "gpt2"
    code, out = run_cli(["diagnose", "--checkpoint", str(path), "--model",
                         f"{tmp_path / 'spec.py'}:gpt2", "--format", "json"])
    causes = {c["label"]: c for c in json.loads(out)["causes"]}
    # a folder's model.safetensors is the state_dict, not an entry of a training checkpoint
    assert "wrapped_checkpoint" not in causes, causes["wrapped_checkpoint"]
    fix = causes["tied_weights"]["fix"]["code"]
    model = namespace["gpt2"]()  # type: ignore[operator]
    exec(textwrap.dedent(fix), {"model": model})  # raised IsADirectoryError / UnpicklingError
    wte = model.transformer.wte.weight
    assert model.lm_head.weight is wte
    import safetensors.torch
    saved = safetensors.torch.load_file(tmp_path / "gpt2" / "model.safetensors")
    assert torch.equal(wte, saved["transformer.wte.weight"])
