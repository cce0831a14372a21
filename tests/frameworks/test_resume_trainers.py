"""verify-resume through the frameworks' own resume path, on runs written by the example recipes:
HF Trainer (``trainer.train(resume_from_checkpoint=...)``) and Lightning
(``trainer.fit(..., ckpt_path=...)``); a removed piece is named."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli

pytestmark = pytest.mark.frameworks
Layouts = Callable[[str], Path]
REPO = Path(__file__).resolve().parents[2]
HF = str(REPO / "examples" / "hf_trainer_recipe.py")
LIGHTNING = str(REPO / "examples" / "lightning_recipe.py")


def verify(runner: CliRunner, recipe: str, ckpt: Path, nxt: Path) -> tuple[int, dict]:
    result = runner.invoke(cli, ["verify-resume", "--recipe", recipe, str(ckpt), str(nxt),
                                 "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_hf_trainer_resume_reproduces_next_bitwise(layouts: Layouts, runner: CliRunner) -> None:
    out = layouts("hf")
    code, report = verify(runner, HF, out / "checkpoint-2", out / "checkpoint-4")
    assert code == 0 and report["status"] == "identical", report["verdict"]
    assert (report["framework"], report["resume_step"], report["end_step"]) == ("hf-trainer", 2, 4)
    kinds = {p["kind"] for p in report["pieces"]}
    assert {"model", "optimizer", "scheduler", "rng"} <= kinds
    assert [r["step"] for r in report["losses"]] == [3, 4]
    assert all(r["status"] == "identical" for r in report["losses"])


def test_hf_trainer_without_rng_state_names_it(layouts: Layouts, runner: CliRunner,
                                               tmp_path: Path) -> None:
    out = layouts("hf")
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(out / "checkpoint-2", ckpt)
    (ckpt / "rng_state.pth").unlink()
    code, report = verify(runner, HF, ckpt, out / "checkpoint-4")
    assert code == 1 and report["status"] == "diverged"
    assert report["missing"] == ["rng"]
    assert report["verdict"].startswith("CKPT lacks rng (rng_state.pth)")
    assert any(p["kind"] == "rng" and p["differing"] for p in report["pieces"])


def test_lightning_resume_reproduces_next_bitwise(layouts: Layouts, runner: CliRunner) -> None:
    out = layouts("lightning")
    code, report = verify(runner, LIGHTNING, out / "epoch0-step4.ckpt", out / "epoch1-step8.ckpt")
    assert code == 0 and report["status"] == "identical", report["verdict"]
    assert report["framework"] == "lightning" and "callbacks" in report["skipped"]


def test_lightning_without_optimizer_states_names_them(layouts: Layouts, runner: CliRunner,
                                                       tmp_path: Path) -> None:
    out = layouts("lightning")
    saved = torch.load(out / "epoch0-step4.ckpt", weights_only=False)
    saved["optimizer_states"] = []
    ckpt = tmp_path / "epoch0-step4.ckpt"
    torch.save(saved, ckpt)
    code, report = verify(runner, LIGHTNING, ckpt, out / "epoch1-step8.ckpt")
    assert code == 1 and report["missing"] == ["optimizer"]
    assert report["verdict"].startswith("CKPT lacks optimizer (optimizer_states)")


def test_recipe_error_shows_the_whole_message(layouts: Layouts, runner: CliRunner,
                                              tmp_path: Path) -> None:
    recipe = tmp_path / "broken_recipe.py"
    recipe.write_text("def build_trainer(output_dir):\n"
                      "    raise ValueError('could not build the trainer:\\n"
                      "the cause is on this second line')\n")
    out = layouts("hf")
    result = runner.invoke(cli, ["verify-resume", "--recipe", str(recipe),
                                 str(out / "checkpoint-2"), str(out / "checkpoint-4")])
    assert result.exit_code == 2
    assert "the cause is on this second line" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# ---- run mode: --steps N --resume-at K, the trainer writes both checkpoints itself ------------

def verify_run(runner: CliRunner, recipe: str, *args: str) -> tuple[int, dict]:
    result = runner.invoke(cli, ["verify-resume", "--recipe", recipe, *args, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_hf_trainer_run_mode_resumes_through_trainer(runner: CliRunner) -> None:
    code, report = verify_run(runner, HF, "--steps", "4", "--resume-at", "1")
    assert code == 0 and report["status"] == "identical", report["verdict"]
    assert (report["mode"], report["resume_step"], report["end_step"]) == ("trainer-run", 1, 4)
    assert {"model", "optimizer", "scheduler", "rng"} <= {p["kind"] for p in report["pieces"]}
    assert [r["step"] for r in report["losses"]] == [2, 3, 4]  # the recipe's max_steps is 4 too
    assert all(r["status"] == "identical" for r in report["losses"])


def test_lightning_run_mode_resumes_at_an_epoch_end(runner: CliRunner) -> None:
    # 4 batches per epoch: step 4 ends epoch 0 (saved after its validation, as ModelCheckpoint)
    code, report = verify_run(runner, LIGHTNING, "--steps", "6", "--resume-at", "4")
    assert code == 0 and report["status"] == "identical", report["verdict"]
    assert (report["framework"], report["resume_step"], report["end_step"]) == ("lightning", 4, 6)
    assert {"model", "optimizer", "scheduler", "loops"} <= {p["kind"] for p in report["pieces"]}


def test_lightning_run_mode_inside_an_epoch_says_why(runner: CliRunner) -> None:
    code, report = verify_run(runner, LIGHTNING, "--steps", "5", "--resume-at", "2")
    assert code == 1 and report["status"] == "diverged"
    assert "step 2 is inside an epoch" in report["verdict"]


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "4", "--resume-at", "0"], "--resume-at 0: a trainer writes no checkpoint"),
    (["--steps", "4", "--resume-at", "2", "--via", "safetensors"], "--via"),
    (["--steps", "4", "--resume-at", "2", "--in-process"], "--in-process"),
], ids=["resume-at-0", "via", "in-process"])
def test_run_mode_options_that_do_not_apply_say_why(runner: CliRunner, args: list[str],
                                                    fragment: str) -> None:
    result = runner.invoke(cli, ["verify-resume", "--recipe", HF, *args])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_run_mode_recipe_error_shows_the_whole_message(runner: CliRunner, tmp_path: Path) -> None:
    recipe = tmp_path / "broken_recipe.py"
    recipe.write_text("def build_trainer(output_dir):\n"
                      "    raise ValueError('could not build the trainer:\\n"
                      "the cause is on this second line')\n")
    result = runner.invoke(cli, ["verify-resume", "--recipe", str(recipe), "--steps", "3",
                                 "--resume-at", "1"])
    assert result.exit_code == 2
    assert "the uninterrupted run failed" in result.stderr
    assert "the cause is on this second line" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_lightning_shuffling_with_the_global_rng_names_the_unsaved_rng(runner: CliRunner,
                                                                        tmp_path: Path) -> None:
    # the example recipe, but shuffled by DataLoader(shuffle=True): Lightning saves no RNG state,
    # so the resumed epoch draws another order and the verdict must say what it could not check
    text = Path(LIGHTNING).read_text()
    old = ("sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)\n"
           "        return DataLoader(data, batch_size=8, sampler=sampler)")
    assert old in text
    recipe = tmp_path / "shuffled.py"
    recipe.write_text(text.replace(old, "return DataLoader(data, batch_size=8, shuffle=True)"))
    code, report = verify_run(runner, str(recipe), "--steps", "8", "--resume-at", "4")
    assert code == 1 and report["status"] == "diverged", report["verdict"]
    assert "not checked: Lightning saves no RNG state" in report["verdict"]
    assert "shuffle=True" in report["verdict"]
