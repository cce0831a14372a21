"""The inspect command through Click's runner and as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.conftest import malicious_state
from tests.ops.test_inspect import training_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_table_names_layout_values_and_default(runner: CliRunner,
                                               make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", training_checkpoint())
    result = runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "format: torch-zip" in out
    assert "model_state_dict" in out and "optimizer" in out and "<- default" in out
    assert "epoch" in out and "0.4512" in out
    assert result.stderr == ""


def test_repeated_layers_are_folded_unless_expand(runner: CliRunner,
                                                 make_checkpoint: Callable[..., Path]) -> None:
    state = {f"encoder.layer.{i}.attention.q.weight": torch.zeros(4, 4) for i in range(12)}
    path = make_checkpoint("safetensors", state)
    folded = runner.invoke(cli, ["inspect", str(path)]).stdout
    assert "encoder.layer.{0..11}.attention.q.weight" in folded and "x12" in folded
    expanded = runner.invoke(cli, ["inspect", str(path), "--expand"]).stdout
    assert "encoder.layer.11.attention.q.weight" in expanded and "{0..11}" not in expanded
    tree = runner.invoke(cli, ["inspect", str(path), "--tree"]).stdout
    assert "layer.{0..11}" in tree and "x12" in tree


def test_json_lists_every_tensor_uncompressed(runner: CliRunner,
                                             make_checkpoint: Callable[..., Path]) -> None:
    state = {f"layer.{i}.w": torch.zeros(2, 3) for i in range(5)}
    path = make_checkpoint("torch-zip", state)
    result = runner.invoke(cli, ["inspect", str(path), "--format", "json"])
    data = json.loads(result.stdout)
    assert [t["key"] for t in data["tensors"]] == [f"layer.{i}.w" for i in range(5)]
    assert data["tensors"][0]["shape"] == [2, 3] and data["tensors"][0]["dtype"] == "float32"
    assert data["format"] == "torch-zip" and data["unsafe"] is False
    assert data["totals"]["tensors"] == 5 and data["totals"]["bytes"] == 5 * 24


def test_markdown_tables(runner: CliRunner, make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("safetensors", {"a.w": torch.zeros(2)})
    out = runner.invoke(cli, ["inspect", str(path), "--format", "markdown"]).stdout
    assert "| key" in out and "## " in out


def test_malicious_pickle_is_reported_not_run(runner: CliRunner, tmp_path: Path,
                                              canary: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save(malicious_state(canary), path)
    result = runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 1
    assert "os.system" in result.stdout or "posix.system" in result.stdout
    assert "unsafe global" in result.stderr
    assert not canary.exists()


def test_missing_file_is_one_line_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["inspect", str(tmp_path / "nope.pth")])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "nope.pth" in result.stderr


def test_help_has_an_example(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["inspect", "--help"])
    assert result.exit_code == 0 and "ckpttools inspect model.pth" in result.stdout


def test_inspect_never_imports_torch(make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", training_checkpoint())
    code = ("import sys\nfrom ckpttools.cli.main import main\n"
            f"rc = main(['inspect', {str(path)!r}, '--format', 'json'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["totals"]["tensors"] > 0


def test_python_m_and_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "ckpttools", "--version"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0 and "ckpttools, version" in proc.stdout


def test_json_with_nan_and_inf_values(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "nan.pth"
    torch.save({"w": torch.tensor([1.0, float("nan")]), "loss": float("nan"),
                "best": float("inf")}, path)
    result = runner.invoke(cli, ["inspect", str(path), "--format", "json", "--stats"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # strict JSON: no bare NaN tokens
    values = {o["key"]: o["value"] for o in data["objects"]}
    assert values == {"loss": "nan", "best": "inf"}
    assert data["stats"][0]["nan"] == 1


def test_overlong_key_segments_are_cut_in_the_table_only(runner: CliRunner, tmp_path: Path) -> None:
    """Lightning keys a callback's state by its settings; the table cuts such a segment, JSON
    keeps the key whole."""
    state = "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0}"
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)},
                "callbacks": {state: {"best_model_path": "a.ckpt"}}}, path)
    text = runner.invoke(cli, ["inspect", str(path)]).stdout
    assert "callbacks.ModelCheckpoint{'monitor': None, 'mod....best_model_path" in text
    assert state not in text
    data = json.loads(runner.invoke(cli, ["inspect", str(path), "--format", "json"]).stdout)
    assert f"callbacks.{state}.best_model_path" in [o["key"] for o in data["objects"]]
