"""``inspect`` on what HF Trainer, accelerate and Lightning really write: framework, step, epoch,
best metric, pieces with kinds; an optimizer file is never the default model state_dict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.errors import KeyNotFoundError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.state_dict import find_state_dict

pytestmark = pytest.mark.frameworks
Layouts = Callable[[str], Path]

# Trainers pickle their own classes (TrainingArguments, DeepSpeed's LossScaler and ZeRO enums):
# not on the allowlist, so inspect and audit fail closed on them until the user allows them.
FRAMEWORK_ALLOW = ["--allow", "transformers.*", "--allow", "accelerate.*", "--allow", "deepspeed.*"]


def inspect_json(runner: CliRunner, path: Path) -> dict[str, Any]:
    result = runner.invoke(cli, ["inspect", str(path), "--format", "json", *FRAMEWORK_ALLOW])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def hf_checkpoint(layouts: Layouts, step: int = 4) -> Path:
    return layouts("hf") / f"checkpoint-{step}"


def test_hf_trainer_folder_shows_step_epoch_and_every_piece(runner: CliRunner,
                                                             layouts: Layouts) -> None:
    path = hf_checkpoint(layouts)
    state = json.loads((path / "trainer_state.json").read_text())
    report = inspect_json(runner, path)
    trainer = report["trainer"]
    assert trainer["framework"] == "hf-trainer"
    assert (trainer["step"], trainer["epoch"]) == (state["global_step"], state["epoch"]) == (4, 0.5)
    kinds = {p["name"]: p["kind"] for p in trainer["pieces"]}
    assert kinds["model.safetensors"] == "model" and kinds["optimizer.pt"] == "optimizer"
    assert kinds["scheduler.pt"] == "scheduler" and kinds["rng_state.pth"] == "rng"
    assert kinds["trainer_state.json"] == "trainer_state"
    assert trainer["missing"] == []
    assert report["default_state_dict"] == "model.safetensors"
    by_key = {s["key"]: s["kind"] for s in report["state_dicts"]}
    assert by_key["optimizer.pt"] == "optimizer" and by_key["rng_state.pth"] == "rng"
    text = runner.invoke(cli, ["inspect", str(path), *FRAMEWORK_ALLOW]).stdout
    assert "framework: hf-trainer" in text and "step: 4   epoch: 0.5" in text
    assert text.index("Trainer checkpoint") < text.index("State dicts")


def test_hf_trainer_folder_names_what_a_resume_lacks(runner: CliRunner, layouts: Layouts,
                                                     copy_of: Callable[[Path], Path]) -> None:
    path = copy_of(hf_checkpoint(layouts))
    (path / "rng_state.pth").unlink()
    (path / "scheduler.pt").unlink()
    trainer = inspect_json(runner, path)["trainer"]
    assert trainer["missing"] == ["scheduler", "rng"]
    assert "resume: missing scheduler, rng" in runner.invoke(cli, ["inspect", str(path), *FRAMEWORK_ALLOW]).stdout


def test_optimizer_file_alone_is_an_optimizer_never_a_model(runner: CliRunner,
                                                            layouts: Layouts) -> None:
    path = hf_checkpoint(layouts) / "optimizer.pt"
    report = inspect_json(runner, path)
    assert [s["kind"] for s in report["state_dicts"]] == ["optimizer"]
    assert report["default_state_dict"] is None
    with open_checkpoint(path) as reader, pytest.raises(KeyNotFoundError, match="optimizer state"):
        find_state_dict(reader)
    saved = torch.load(path, weights_only=True)  # the real file is an optimizer state_dict
    assert set(saved) == {"state", "param_groups"}


def test_rng_file_alone_is_rng(runner: CliRunner, layouts: Layouts) -> None:
    report = inspect_json(runner, hf_checkpoint(layouts) / "rng_state.pth")
    assert [s["kind"] for s in report["state_dicts"]] == ["rng"]
    assert report["default_state_dict"] is None


def test_hf_folder_default_state_dict_is_the_model_weights(layouts: Layouts) -> None:
    from safetensors.torch import load_file

    path = hf_checkpoint(layouts)
    with open_checkpoint(path) as reader:
        view = find_state_dict(reader)
    weights = load_file(path / "model.safetensors")
    assert view.prefix == "model.safetensors"
    assert sorted(e.key for e in view.entries) == sorted(weights)


def test_accelerate_save_state(runner: CliRunner, layouts: Layouts) -> None:
    path = layouts("accelerate")
    report = inspect_json(runner, path)
    trainer = report["trainer"]
    assert trainer["framework"] == "accelerate"
    scheduler = torch.load(path / "scheduler.bin", weights_only=True)
    assert trainer["step"] == scheduler["last_epoch"] == 2
    rng = [p for p in trainer["pieces"] if p["kind"] == "rng"]
    assert [(p["name"], p["rank"]) for p in rng] == [("random_states_0.pkl", 0)]
    assert trainer["missing"] == []
    assert report["default_state_dict"] == "model.safetensors"


def lightning_checkpoint(layouts: Layouts) -> Path:
    return layouts("lightning") / "last.ckpt"


def test_lightning_ckpt_shows_step_epoch_and_best_score(runner: CliRunner,
                                                        layouts: Layouts) -> None:
    path = lightning_checkpoint(layouts)
    saved = torch.load(path, weights_only=False)
    callback = next(v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))
    trainer = inspect_json(runner, path)["trainer"]
    assert trainer["framework"] == "lightning"
    assert (trainer["step"], trainer["epoch"]) == (saved["global_step"], saved["epoch"])
    assert trainer["best_metric"] == callback["best_model_score"].item()
    assert trainer["best_checkpoint"] == callback["best_model_path"]
    kinds = {p["name"]: p["kind"] for p in trainer["pieces"]}
    assert kinds == {"state_dict": "model", "optimizer_states.0": "optimizer",
                     "lr_schedulers.0": "scheduler", "loops": "loops",
                     "callbacks": "callbacks", "hyper_parameters": "config"}
    assert trainer["missing"] == []


def test_lightning_callbacks_are_bookkeeping_not_a_model(runner: CliRunner,
                                                         layouts: Layouts) -> None:
    report = inspect_json(runner, lightning_checkpoint(layouts))
    kinds = {s["key"]: s["kind"] for s in report["state_dicts"]}
    assert kinds["callbacks"] == "callbacks" and kinds["state_dict"] == "model"
    assert report["default_state_dict"] == "state_dict"


def test_output_dir_names_its_checkpoints(runner: CliRunner, layouts: Layouts) -> None:
    out = layouts("hf")
    result = runner.invoke(cli, ["inspect", str(out), *FRAMEWORK_ALLOW])
    assert result.exit_code == 2 and result.stdout == ""
    assert "checkpoint-2, checkpoint-4" in result.stderr
    assert str(out / "checkpoint-4") in result.stderr


@pytest.mark.parametrize(("name", "framework"), [
    ("hf", "hf-trainer"), ("accelerate", "accelerate"), ("lightning", "lightning"),
    ("zero2", "deepspeed"), pytest.param("zero3x2", "deepspeed", marks=pytest.mark.dist),
    pytest.param("dcp2", "dcp", marks=pytest.mark.dist)])
def test_inspect_text_and_json_agree_on_framework_step_and_pieces(
        name: str, framework: str, runner: CliRunner, layouts: Layouts) -> None:
    path = {"hf": hf_checkpoint(layouts), "lightning": layouts("lightning") / "last.ckpt"}.get(
        name, layouts(name))
    trainer = inspect_json(runner, path)["trainer"]
    assert trainer["framework"] == framework and isinstance(trainer["step"], int)
    assert trainer["pieces"] and trainer["missing"] == []
    result = runner.invoke(cli, ["inspect", str(path), *FRAMEWORK_ALLOW])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"framework: {framework}" in text and f"step: {trainer['step']}" in text
    assert "resume: every piece present" in text
    # a framework that never saves the RNG says so beside "every piece present"
    assert ("saves no RNG state" in text) == (framework in ("lightning", "deepspeed")), text
    for piece in trainer["pieces"]:  # every piece in the table with its kind
        assert any(piece["name"] in line and piece["kind"] in line for line in text.splitlines())


def test_trainer_state_alone_points_at_its_folder(runner: CliRunner, layouts: Layouts) -> None:
    result = runner.invoke(cli, ["inspect", str(hf_checkpoint(layouts) / "trainer_state.json")])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "inspect the checkpoint-N folder that holds it" in lines[0]
