"""DeepSpeed ZeRO checkpoints written by ``deepspeed.initialize`` on CPU: detected as one
checkpoint, inspected with step and pieces, and reassembled into fp32 weights bitwise equal to
DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint``, one tensor at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.formats.base import Format
from ckpttools.formats.registry import detect_format, open_checkpoint

pytestmark = pytest.mark.frameworks
Layouts = Callable[[str], Path]
ROOT = Path(__file__).resolve().parents[2]

ONE_RANK = ["zero1", "zero2", "zero3"]
TWO_RANKS = [pytest.param(n, marks=pytest.mark.dist) for n in ("zero2x2", "zero3x2")]

# Trainers pickle their own classes (TrainingArguments, DeepSpeed's LossScaler and ZeRO enums):
# not on the allowlist, so inspect and audit fail closed on them until the user allows them.
FRAMEWORK_ALLOW = ["--allow", "transformers.*", "--allow", "accelerate.*", "--allow", "deepspeed.*"]


def deepspeed_reference(folder: Path, out: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's own consolidation, run in a child process and saved with torch.save."""
    code = ("import sys, torch; from deepspeed.utils.zero_to_fp32 import "
            "get_fp32_state_dict_from_zero_checkpoint as get; "
            "torch.save(dict(get(sys.argv[1])), sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin",
                               "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


@pytest.mark.parametrize("name", ONE_RANK + TWO_RANKS)
def test_reader_equals_deepspeed_consolidation(name: str, layouts: Layouts,
                                               tmp_path: Path) -> None:
    folder = layouts(name)
    assert detect_format(folder) is Format.DEEPSPEED
    reference = deepspeed_reference(folder, tmp_path / "ref.pt")
    with open_checkpoint(folder) as reader:
        assert [e.key for e in reader.tensor_entries()] == list(reference)
        for key, tensor in reference.items():
            assert same_bits(reader.load(key), tensor), key


@pytest.mark.parametrize("name", TWO_RANKS)
def test_two_rank_partitions_are_read_from_both_files(name: str, layouts: Layouts) -> None:
    with open_checkpoint(layouts(name)) as reader:
        files = {p for e in reader.tensor_entries() if e.dtype == "float32"
                 and "running" not in e.key for p, *_ in reader.ranges(e.key)}  # type: ignore[attr-defined]
    assert len(files) == 2 and all("optim_states" in f for f in files)


@pytest.mark.parametrize("name", ONE_RANK + TWO_RANKS)
def test_inspect_shows_step_stage_and_every_rank(name: str, layouts: Layouts,
                                                 runner: CliRunner) -> None:
    folder = layouts(name)
    result = runner.invoke(cli, ["inspect", str(folder), "--format", "json", *FRAMEWORK_ALLOW])
    assert result.exit_code == 0, result.output
    trainer = json.loads(result.stdout)["trainer"]
    model_states = next(folder.glob("global_step*/*model_states.pt"))
    saved = torch.load(model_states, weights_only=False)
    assert trainer["framework"] == "deepspeed"
    assert trainer["step"] == saved["global_steps"]
    ranks = sorted(p["rank"] for p in trainer["pieces"] if p["kind"] == "optimizer")
    assert ranks == list(range(saved["dp_world_size"]))
    assert trainer["missing"] == []
    assert f"ZeRO stage {name[4]}" in trainer["notes"][0]


@pytest.mark.parametrize("name", ONE_RANK + TWO_RANKS)
def test_convert_writes_one_safetensors_file(name: str, layouts: Layouts, runner: CliRunner,
                                             tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = layouts(name)
    out = tmp_path / "model.safetensors"
    result = runner.invoke(cli, ["convert", str(next(folder.glob("global_step*"))), str(out)])
    assert result.exit_code == 0, result.output
    reference = deepspeed_reference(folder, tmp_path / "ref.pt")
    written = load_file(out)
    assert list(written) == list(reference) or sorted(written) == sorted(reference)
    for key, tensor in reference.items():
        assert same_bits(written[key], tensor), key


def test_missing_rank_file_is_one_line_error(layouts: Layouts, copy_of: Callable[[Path], Path],
                                             runner: CliRunner) -> None:
    folder = copy_of(layouts("zero3"))
    for f in folder.glob("global_step*/*optim_states.pt"):
        f.unlink()
    result = runner.invoke(cli, ["inspect", str(folder), *FRAMEWORK_ALLOW])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.dist
def test_a_missing_rank_is_named(layouts: Layouts, copy_of: Callable[[Path], Path],
                                 runner: CliRunner, tmp_path: Path) -> None:
    folder = copy_of(layouts("zero2x2"))
    next(folder.glob("global_step*/zero_pp_rank_1_*optim_states.pt")).unlink()
    result = runner.invoke(cli, ["convert", str(folder), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 2
    assert "ZeRO states of 2 ranks expected (partition_count), 1 *_optim_states.pt found" \
        in result.stderr
    assert not (tmp_path / "out.safetensors").exists()
