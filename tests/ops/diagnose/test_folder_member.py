"""``diagnose --checkpoint`` of a model folder: the state_dict being the folder's
``model.safetensors`` is not "a whole training checkpoint was passed" (that cause is for a file
whose weights sit under a key, such as Lightning's or a training loop's ``state_dict``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from torch import nn

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diagnose.diagnosis import diagnose_checkpoint


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def _labels(path: Path) -> list[str]:
    with open_checkpoint(str(path)) as reader:
        return [c.label for c in diagnose_checkpoint(reader, TiedLM()).causes]


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"emb.weight": torch.randn(10, 4)}


def test_folder_file_is_no_wrapper(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    save_model(TiedLM(), str(folder / "model.safetensors"))  # stores the tied weight once
    (folder / "config.json").write_text("{}")
    assert _labels(folder) == ["tied_weights"]


def test_folder_file_holding_a_training_dict_is_one(tmp_path: Path,
                                                    weights: dict[str, torch.Tensor]) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"epoch": 1, "state_dict": weights}, folder / "pytorch_model.bin")
    assert "wrapped_checkpoint" in _labels(folder)


def test_training_file_is_one(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    torch.save({"epoch": 1, "state_dict": weights}, tmp_path / "train.pt")
    assert "wrapped_checkpoint" in _labels(tmp_path / "train.pt")
