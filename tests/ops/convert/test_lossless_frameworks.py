"""Lossless round trips of checkpoints written by Lightning and transformers (built from tiny
configs, nothing downloaded), through every conversion path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402
from tests.ops.convert.strict import assert_identical  # noqa: E402
from tests.ops.convert.test_lossless import PATHS, run_path  # noqa: E402

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def _lightning_ckpt(tmp_path: Path) -> Path:
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))

        def training_step(self, batch: Any, idx: int) -> Any:
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=1e-3)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)),
                                       batch_size=4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=str(tmp_path))
    trainer.fit(Tiny(), data)
    path = tmp_path / "lightning.ckpt"
    trainer.save_checkpoint(path)
    return path


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def _transformers_bin(tmp_path: Path) -> Path:
    path = tmp_path / "pytorch_model.bin"
    torch.save(_gpt2().state_dict(), path)
    return path


def _transformers_sharded_bin(tmp_path: Path) -> Path:
    from huggingface_hub import save_torch_state_dict

    folder = tmp_path / "sharded"
    folder.mkdir()
    save_torch_state_dict(_gpt2().state_dict(), folder, safe_serialization=False,
                          max_shard_size="5KB")
    return folder


SOURCES = {"lightning": _lightning_ckpt, "transformers_bin": _transformers_bin,
           "transformers_sharded_bin": _transformers_sharded_bin}


def _expected(path: Path) -> Any:
    if path.is_dir():  # a sharded .bin set: the shards' dicts merged, as transformers loads it
        merged: dict[str, Any] = {}
        for shard in sorted(path.glob("*.bin")):
            merged.update(torch.load(shard, weights_only=True))
        return merged
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("source", list(SOURCES))
def test_framework_round_trip_is_identical(tmp_path: Path, source: str, path: str) -> None:
    src = SOURCES[source](tmp_path)
    back = run_path(tmp_path, src, PATHS[path])
    assert_identical(_expected(src), back)
    if source.startswith("transformers"):
        # the tied embedding is one storage again
        assert back["lm_head.weight"].untyped_storage().data_ptr() == \
            back["transformer.wte.weight"].untyped_storage().data_ptr()
    if source == "transformers_bin":
        assert back._metadata["transformer.h.0.ln_1"] == {"version": 1}


def test_lightning_state_dict_keeps_metadata(tmp_path: Path) -> None:
    src = _lightning_ckpt(tmp_path)
    out = tmp_path / "m.safetensors"
    assert convert_checkpoint(str(src), str(out)).ok
    back = tmp_path / "back.pth"
    assert convert_checkpoint(str(out), str(back)).ok
    state = torch.load(back, weights_only=True)["state_dict"]
    assert state._metadata["net.1"]["version"] == 2
