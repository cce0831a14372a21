"""Real transformers, Lightning and accelerate checkpoints (issue #12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._real_cases import build
from tests.ops.diff._case_checks import check_case, run_cli

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

BERT = ["mlm-to-bare", "cls-to-bare", "bare-to-mlm", "bare-to-cls", "cls-to-cls5", "mlm-to-mlm"]


@pytest.mark.parametrize("name", BERT)
def test_transformers(name: str, tmp_path: Path) -> None:
    case = build(name, tmp_path)
    plan = check_case(case, tmp_path)
    assert plan["source"]["file"].endswith("model.safetensors")
    assert plan["advice"] and {a["framework"] for a in plan["advice"]} == {"transformers"}
    # the framework's own way works too: from_pretrained with the advised arguments
    model_cls = type(case.model())
    for advice in plan["advice"]:
        if "ignore_mismatched_sizes" in advice["code"]:  # it names what stays initialised
            assert all(k in advice["summary"] for k in plan["left_initialised"][:3])
        scope = {model_cls.__name__: model_cls}
        exec(advice["code"], scope)
        assert isinstance(scope["model"], model_cls)


def test_bert_mlm_into_bare_model_is_strip_and_drop(tmp_path: Path) -> None:
    case = build("mlm-to-bare", tmp_path)
    plan = check_case(case, tmp_path)
    assert plan["steps"][0]["args"] == [r"^(?:cls)(?:\.|$)"]
    assert plan["steps"][1]["args"] == ["bert."]
    assert plan["left_initialised"] == ["pooler.dense.weight", "pooler.dense.bias"]


def test_absent_tied_aliases_exit_1_unless_allowed(tmp_path: Path) -> None:
    case = build("mlm-to-mlm", tmp_path)
    code, out = run_cli(["diff", str(case.path), "--model", case.spec])
    assert code == 1 and "tied aliases absent" in out.splitlines()[0]
    assert "from_pretrained re-ties them" in out
    code, out = run_cli(["diff", str(case.path), "--model", case.spec, "--allow-tied"])
    assert code == 0 and out.startswith("OK")
    # diagnose names the tie (it used to say that no known cause fits)
    _, out = run_cli(["diagnose", "--checkpoint", str(case.path), "--model", case.spec,
                      "--format", "json"])
    assert json.loads(out)["causes"][0]["label"] == "tied_weights"


def test_lightning_ckpt_into_the_inner_module(tmp_path: Path) -> None:
    case = build("lightning", tmp_path)
    plan = check_case(case, tmp_path)
    assert plan["steps"][1]["args"] == ["model."] and plan["steps"][0]["args"] == [
        r"^(?:target_scale)(?:\.|$)"]
    assert "load_from_checkpoint" in plan["advice"][0]["code"]
    assert "--key state_dict" in plan["command"]


def test_remap_key_on_lightning_writes_the_state_dict_alone(tmp_path: Path) -> None:
    import torch

    case = build("lightning", tmp_path)
    out, kept = tmp_path / "alone.ckpt", tmp_path / "kept.ckpt"
    args = ["remap", str(case.path), "--key", "state_dict", "--strip-prefix", "model.",
            "--drop", "^target_scale$"]
    assert run_cli([*args[:2], str(out), *args[2:]])[0] == 0
    case.model().load_state_dict(torch.load(out, weights_only=True))
    assert run_cli([*args[:2], str(kept), *args[2:], "--keep-wrapper"])[0] == 0
    whole = torch.load(kept, weights_only=False)
    assert "pytorch-lightning_version" in whole
    case.model().load_state_dict(whole["state_dict"])


def test_accelerate_save_state_folder(tmp_path: Path) -> None:
    case = build("accelerate", tmp_path)
    plan = check_case(case, tmp_path)
    assert plan["source"]["file"] == str(case.path / "model.safetensors")
    assert "safetensors.torch.load_file" in plan["python"]
    code, out = run_cli(["diff", str(case.path), "--model", case.spec, "--format", "json"])
    assert code == 0 and json.loads(out)["ok"]
