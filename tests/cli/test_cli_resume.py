"""``ckpttools verify-resume`` through click: verdict first, tables, JSON, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LINEAR = str(EXAMPLES / "tutorial_linear.py")
DROPOUT = str(EXAMPLES / "mlp_dropout.py")


def _no_rng(tmp_path: Path, example: str) -> str:
    path = tmp_path / "no_rng.py"
    path.write_text(
        "import runpy\n"
        f"globals().update({{k: v for k, v in runpy.run_path({example!r}).items() if not k.startswith('__')}})\n"
        "def save_checkpoint(path, state):\n"
        "    import torch\n"
        "    torch.save({k: v for k, v in state.items() if k != 'rng_state'}, path)\n")
    return str(path)


def test_run_mode_fresh_process_identical(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, "--steps", "5", "--resume-at", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "OK: bitwise identical: resuming after step 3 reproduces steps 3..4"
    assert "resumed in a fresh process" in result.stdout
    assert "Loss per step" in result.stdout and "State" in result.stdout
    assert result.stderr == ""


def test_run_mode_fresh_process_missing_rng_with_dropout(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["verify-resume", "--recipe", _no_rng(tmp_path, DROPOUT),
                                 "--steps", "5", "--resume-at", "3"])
    assert result.exit_code == 1, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("DIVERGED at step 3: the checkpoint has no RNG state; the model uses dropout")
    assert "missing from the checkpoint (resumed fresh): RNG state" in result.stdout
    assert "Attribution" in result.stdout and "DIFFERS" in result.stdout


def test_json_output(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["verify-resume", "--recipe", _no_rng(tmp_path, DROPOUT), "--steps", "5",
                                 "--resume-at", "3", "--in-process", "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "diverged" and data["ok"] is False and data["diverged_step"] == 3
    assert data["missing"] == ["rng"] and data["fresh_process"] is False
    assert [a["piece"] for a in data["attributions"] if a["explains"]] == ["rng"]
    assert {"step", "reference", "resumed", "diff", "status"} <= set(data["losses"][0])
    assert {"key", "status", "max_abs", "detail"} <= set(data["final_diffs"][0])


def test_markdown_output(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, "--steps", "3", "--resume-at", "1",
                                 "--in-process", "--format", "markdown"])
    assert result.exit_code == 0
    assert result.stdout.startswith("## OK: bitwise identical") and "| step" in result.stdout


def test_checkpoint_mode(runner: CliRunner, tmp_path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    for epoch in range(4):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), 2 * x)
        loss.backward()
        optimizer.step()
        torch.save({"epoch": epoch + 1, "model_state_dict": model.state_dict(),
                    "optimizer_state_dict": optimizer.state_dict(), "loss": loss.item()},
                   tmp_path / f"ckpt_{epoch + 1}.pt")
    ok = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, str(tmp_path / "ckpt_3.pt"),
                             str(tmp_path / "ckpt_4.pt")])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("OK: bitwise identical")
    assert "checkpoints:" in ok.stdout and "no RNG state (it made no difference here)" in ok.stdout
    early = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, str(tmp_path / "ckpt_1.pt"),
                              str(tmp_path / "ckpt_2.pt"), "--format", "json"])
    assert early.exit_code == 0  # consecutive checkpoints of a deterministic run also match
    state = torch.load(tmp_path / "ckpt_4.pt")
    state["model_state_dict"]["bias"] += 1e-3
    torch.save(state, tmp_path / "ckpt_4.pt")
    diverged = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, str(tmp_path / "ckpt_3.pt"),
                                   str(tmp_path / "ckpt_4.pt")])
    assert diverged.exit_code == 1
    assert diverged.stdout.startswith("DIVERGED at step 3: first differing state: model_state_dict.bias")


def test_missing_function_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    recipe = tmp_path / "broken.py"
    recipe.write_text("def build_model():\n    pass\n\ndef batch(i):\n    pass\n")
    result = runner.invoke(cli, ["verify-resume", "--recipe", str(recipe), "--steps", "2", "--resume-at", "1"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"ckpttools: error: {recipe}: recipe has no build_optimizer(model); define it (see ckpttools verify-resume --help)"]


def test_checkpoint_without_model_state_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    import torch

    torch.save({"epoch": 1, "optimizer_state_dict": {}}, tmp_path / "a.pt")
    torch.save({"epoch": 2, "model_state_dict": {}}, tmp_path / "b.pt")
    result = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "a.pt: checkpoint has no 'model_state_dict' (the model state)" in result.stderr


def test_unsafe_checkpoint_exits_2(runner: CliRunner, tmp_path: Path, canary: Path) -> None:
    import torch

    from tests.conftest import malicious_state

    torch.save({"epoch": 1, "model_state_dict": malicious_state(canary)}, tmp_path / "a.pt")
    torch.save({"epoch": 2, "model_state_dict": {}}, tmp_path / "b.pt")
    result = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])
    assert result.exit_code == 2 and "rerun with --trust" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--steps", "3"], "give CKPT NEXT, or --steps N and --resume-at K"),
    (["a.pt"], "missing NEXT"),
    (["a.pt", "b.pt", "--steps", "3"], "not both"),
    (["--steps", "3", "--resume-at", "3"], "is not below --steps 3"),
    (["a.pt", "b.pt", "--via", "safetensors"], "--via works with --steps/--resume-at only"),
])
def test_usage_errors(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(cli, ["verify-resume", "--recipe", LINEAR, *args])
    assert result.exit_code == 2 and message in result.stderr


def test_help_has_an_example(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["verify-resume", "--help"])
    assert result.exit_code == 0 and "ckpttools verify-resume --recipe examples/tutorial_mlp.py" in result.stdout
