"""remap writes a state_dict's tensors; what it cannot carry (a module's extra state, a sparse
tensor) is named in its notes, never left out in silence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttools.ops.diff.remap import build_rules, remap_checkpoint


class Scaled(torch.nn.Module):
    """A module keeping non-tensor state through get_extra_state (as quantization and
    transformer-engine layers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.scale = {"amax": 3.0, "recipe": "delayed"}

    def get_extra_state(self) -> Any:
        return self.scale

    def set_extra_state(self, state: Any) -> None:
        self.scale = state


@pytest.mark.parametrize("dst", ["out.pt", "out.safetensors"])
def test_extra_state_left_out_is_named(tmp_path: Path, dst: str) -> None:
    torch.manual_seed(0)
    src = tmp_path / "model.pt"
    torch.save(Scaled().state_dict(), src)
    assert "_extra_state" in torch.load(src, weights_only=True)
    result = remap_checkpoint(str(src), str(tmp_path / dst), rules=build_rules(add_prefix="m."))
    assert any("_extra_state" in n and "not in the output" in n for n in result.notes), result.notes


@pytest.mark.filterwarnings("ignore:.*Sparse CSR.*:UserWarning")
def test_sparse_tensors_left_out_are_named(tmp_path: Path) -> None:
    src = tmp_path / "sparse.pt"
    torch.save({"w": torch.ones(2), "coo": torch.eye(2).to_sparse(),
                "csr": torch.eye(2).to_sparse_csr()}, src)
    result = remap_checkpoint(str(src), str(tmp_path / "out.pt"), rules=build_rules(add_prefix="m."))
    assert list(torch.load(tmp_path / "out.pt", weights_only=True)) == ["m.w"]
    note = next(n for n in result.notes if "not in the output" in n)
    assert "coo" in note and "csr" in note


def test_plain_state_dict_has_no_note(tmp_path: Path) -> None:
    src = tmp_path / "plain.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), src)
    result = remap_checkpoint(str(src), str(tmp_path / "out.pt"), rules=build_rules(add_prefix="m."))
    assert result.notes == ()


@pytest.mark.parametrize("dst", ["out.safetensors", "out.pt"])
def test_safetensors_metadata_goes_with_the_tensors(tmp_path: Path, dst: str) -> None:
    """A LoRA's training settings in the source's safetensors metadata: kept in a safetensors
    output, named as left behind in a .pth one."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = tmp_path / "lora.safetensors"
    save_file({"unet.down.weight": torch.randn(4, 2)}, str(src),
              metadata={"ss_network_dim": "4", "ss_network_alpha": "1"})
    out = tmp_path / dst
    result = remap_checkpoint(str(src), str(out), rules=build_rules(add_prefix="lora_"))
    if dst.endswith(".safetensors"):
        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
        assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "1"
        assert not any("metadata" in n for n in result.notes)
    else:
        assert any("ss_network_dim" in n and "not in the output" in n for n in result.notes)
