"""A Qwen2 checkpoint and a Qwen2 model that disagree on ``tie_word_embeddings``.

Saved tied, loaded untied: ``save_pretrained`` leaves ``lm_head.weight`` out, and the plan names
the tie, loads the embedding rows into the head and ties the two again; the snippet and the advised ``from_pretrained`` both run.
Saved untied, loaded tied: every key matches and ``load_state_dict(strict=True)`` succeeds, but
the one shared parameter keeps ``lm_head.weight`` and the embedding is lost; diff said OK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ckpttools.cli.main import cli
from tests._fw_models import qwen2_tied, qwen2_untied

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

MODELS = str(Path(__file__).resolve().parents[2] / "_fw_models.py")


def _saved(tmp_path: Path, tie: bool) -> Path:
    folder = tmp_path / ("tied" if tie else "untied")
    (qwen2_tied() if tie else qwen2_untied()).save_pretrained(folder)
    return folder


def _diff(path: Path, factory: str) -> tuple[int, dict, str]:
    r = CliRunner().invoke(cli, ["diff", str(path), "--model", f"{MODELS}:{factory}", "--format", "json"])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, json.loads(r.stdout), r.stderr


def test_saved_tied_into_untied_model_names_the_tie_and_the_fix_runs(tmp_path: Path) -> None:
    folder = _saved(tmp_path, tie=True)
    sd = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in sd  # what save_pretrained really writes for a tied model
    code, data, _ = _diff(folder / "model.safetensors", "qwen2_untied")
    assert code == 1 and [m["key"] for m in data["missing"]] == ["lm_head.weight"]
    plan = data["plan"]
    (step,) = plan["steps"]
    assert step["kind"] == "copy-embedding" and "tie_word_embeddings=True" in step["summary"]
    assert "model.embed_tokens.weight" in step["summary"] and plan["strict"] and not plan["command"]
    model = qwen2_untied()
    exec(plan["python"], {"model": model})  # runs as printed; load_state_dict(sd) is strict
    assert torch.equal(model.lm_head.weight, sd["model.embed_tokens.weight"])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again, as it was saved
    (advice,) = [a for a in plan["advice"] if "tie_word_embeddings" in a["code"]]
    from transformers import Qwen2ForCausalLM

    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    scope: dict = {"Qwen2ForCausalLM": Qwen2ForCausalLM}
    assert repr(str(folder)) in advice["code"]  # the folder beside the file, with its config.json
    exec(advice["code"], scope)
    assert torch.equal(scope["model"].lm_head.weight, sd["model.embed_tokens.weight"])


def test_saved_untied_into_tied_model_is_not_ok(tmp_path: Path) -> None:
    folder = _saved(tmp_path, tie=False)
    sd = load_file(folder / "model.safetensors")
    assert not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    tied = qwen2_tied()
    tied.load_state_dict(sd)  # strict, and it succeeds: the loss is silent
    assert torch.equal(tied.model.embed_tokens.weight, sd["lm_head.weight"])  # the embedding is gone
    code, data, stderr = _diff(folder / "model.safetensors", "qwen2_tied")
    assert code == 1 and not data["ok"] and data["counts"]["missing"] == 0
    assert data["tie_conflicts"] == [["model.embed_tokens.weight", "lm_head.weight"]]
    assert "keeps lm_head.weight for all of them" in data["verdict"]
    assert "tie_word_embeddings=False" in stderr
    untied = qwen2_untied()  # the fix named: the model untied, as the file was saved
    untied.load_state_dict(sd)
    assert torch.equal(untied.model.embed_tokens.weight, sd["model.embed_tokens.weight"])
    r = CliRunner().invoke(cli, ["audit", str(folder / "model.safetensors"), "--model", f"{MODELS}:qwen2_tied"])
    assert r.exit_code == 1 and "lose weights" in r.stdout


def test_a_tied_torch_save_into_a_tied_model_is_ok(tmp_path: Path) -> None:
    path = tmp_path / "tied.pt"
    torch.save(qwen2_tied().state_dict(), path)  # both names, one storage
    code, data, _ = _diff(path, "qwen2_tied")
    assert code == 0 and data["ok"] and data["tie_conflicts"] == []
