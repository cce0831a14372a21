"""A safetensors file's own ``__metadata__`` (kohya LoRA training settings, notes) travels to a
safetensors output, single or sharded; a .pth or DCP output has no place for it and a warning
says it is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402

USER = {"ss_network_dim": "4", "ss_base_model_version": "sdxl_base_v1-0", "note": "run 7"}


@pytest.fixture
def lora(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "lora.safetensors"
    save_file({"lora_down.weight": torch.randn(4, 16), "lora_up.weight": torch.randn(16, 4),
               "alpha": torch.tensor(4.0)}, str(path), metadata={"format": "pt", **USER})
    return path


def _user_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return {k: v for k, v in meta.items() if k in USER}


def test_safetensors_output_keeps_the_metadata(lora: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = convert_checkpoint(str(lora), str(out))
    assert result.ok and result.verified
    assert _user_metadata(out) == USER
    back = tmp_path / "back.safetensors"  # and through a second conversion
    convert_checkpoint(str(out), str(back))
    assert _user_metadata(back) == USER


def test_sharded_output_keeps_the_metadata_in_each_shard(lora: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    convert_checkpoint(str(lora), str(out), to="safetensors", max_shard_size="300")
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and all(_user_metadata(s) == USER for s in shards)


@pytest.mark.parametrize("target", ["pth", "dcp"])
def test_other_targets_warn_that_it_is_left_behind(lora: Path, tmp_path: Path, target: str) -> None:
    with pytest.warns(UserWarning, match="ss_network_dim.*not carried"):
        convert_checkpoint(str(lora), str(tmp_path / f"out.{target}"), to=target)
