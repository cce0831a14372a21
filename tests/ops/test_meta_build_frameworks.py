"""transformers models (post_init, _init_weights, tied embeddings, rotary tables) build for
metadata work: parameters on meta, the same signature as a normal build, no CPU fallback."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest

from ckpttools.ops.model_spec import build_model, signature_of_model

pytestmark = pytest.mark.frameworks

FACTORIES = textwrap.dedent("""
    def gpt2():
        from transformers import GPT2Config, GPT2LMHeadModel
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                          n_positions=16, bos_token_id=0, eos_token_id=0))

    def llama():
        from transformers import LlamaConfig, LlamaForCausalLM
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32,
                                            intermediate_size=64, num_attention_heads=2,
                                            num_key_value_heads=1, vocab_size=64,
                                            tie_word_embeddings=True))
""")


@pytest.mark.parametrize("name, tie", [
    ("gpt2", ("transformer.wte.weight", "lm_head.weight")),
    ("llama", ("model.embed_tokens.weight", "lm_head.weight")),
])
def test_transformers_model_builds_on_meta_with_its_ties(tmp_path: Path, name: str,
                                                         tie: tuple[str, str]) -> None:
    source = tmp_path / "hf_models.py"
    source.write_text(FACTORIES)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the CPU fallback warns
        meta = build_model(f"{source}:{name}")
    plain = build_model(f"{source}:{name}", meta=False)
    assert all(p.is_meta for p in meta.parameters())
    assert signature_of_model(meta) == signature_of_model(plain)
    assert tie in signature_of_model(meta).ties
