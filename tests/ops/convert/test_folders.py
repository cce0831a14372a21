"""Model folders: the model weights as one state_dict, other files named and selectable with
--key, config.json's torch_dtype after a cast, the user's default permissions on outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64,
                                      n_positions=32, bos_token_id=0, eos_token_id=0))


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hf"
    _gpt2().save_pretrained(folder)
    return folder


@pytest.fixture
def accelerate_folder(tmp_path: Path) -> Path:
    from accelerate import Accelerator

    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    folder = tmp_path / "state"
    acc.save_state(str(folder))
    return folder


def test_transformers_folder_gives_the_state_dict(hf_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "m.pth"
    result = convert_checkpoint(str(hf_folder), str(out))
    assert result.ok and result.member == "model.safetensors" and result.others == ()
    back = torch.load(out, weights_only=True)
    expected = load_file(str(hf_folder / "model.safetensors"))
    assert list(back) == list(expected)
    assert all(torch.equal(back[k], v) for k, v in expected.items())


def test_accelerate_folder_names_the_other_files(accelerate_folder: Path, tmp_path: Path,
                                                 runner: Any) -> None:
    from ckpttools.cli.main import cli

    files = sorted(os.listdir(accelerate_folder))
    out = tmp_path / "m.safetensors"
    result = runner.invoke(cli, ["convert", str(accelerate_folder), str(out)])
    assert result.exit_code == 0, result.output
    assert "converted model.safetensors" in result.stdout
    others = [f for f in files if f != "model.safetensors" and f.endswith((".bin", ".pkl"))]
    assert others and all(f in result.stdout for f in others)
    assert "--key optimizer.bin" in result.stdout
    opt_out = tmp_path / "opt.pth"
    r = convert_checkpoint(str(accelerate_folder), str(opt_out), key="optimizer.bin")
    assert r.ok and r.member == "optimizer.bin"
    expected = torch.load(accelerate_folder / "optimizer.bin", weights_only=True)
    back = torch.load(opt_out, weights_only=True)
    assert back["param_groups"] == expected["param_groups"]


def test_cast_folder_output_updates_torch_dtype(hf_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    result = convert_checkpoint(str(hf_folder), str(out), dtype="bf16", max_shard_size="2GB")
    assert result.ok and "config.json" in result.copied
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert (out / "generation_config.json").exists()


def test_cast_single_file_warns_about_the_config(hf_folder: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"torch_dtype.*auto"):
        assert convert_checkpoint(str(hf_folder), str(tmp_path / "m.safetensors"),
                                  dtype="fp16").ok


def test_outputs_get_the_default_permissions(hf_folder: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = tmp_path / "out"
        assert convert_checkpoint(str(hf_folder), str(folder), max_shard_size="2GB").ok
        single = tmp_path / "m.pth"
        assert convert_checkpoint(str(hf_folder), str(single)).ok
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert single.stat().st_mode & 0o777 == 0o644
