"""FolderReader on an accelerate ``save_state``-like folder written with torch.save/safetensors.

File names follow accelerate's ``save_accelerator_state`` (accelerate/checkpointing.py):
``model.safetensors``, ``optimizer.bin``, ``scheduler.bin``, ``scaler.pt``,
``random_states_0.pkl`` and ``custom_checkpoint_0.pkl``.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ckpttools.entries import ObjectEntry, TensorEntry, TensorRef
from ckpttools.errors import UnknownFormatError
from ckpttools.formats.base import Format
from ckpttools.formats.folder import FolderReader, checkpoint_files
from ckpttools.formats.registry import detect_format, open_checkpoint
from ckpttools.keypaths import get_path, iter_leaves
from tests.conftest import malicious_state

ACCELERATE_FILES = ["custom_checkpoint_0.pkl", "model.safetensors", "optimizer.bin",
                    "random_states_0.pkl", "scaler.pt", "scheduler.bin"]


@pytest.fixture
def accelerate_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    out = tmp_path / "checkpoint_3"
    out.mkdir()
    save_file(model.state_dict(), str(out / "model.safetensors"), metadata={"format": "pt"})
    torch.save(opt.state_dict(), out / "optimizer.bin")
    torch.save(sched.state_dict(), out / "scheduler.bin")
    torch.save({"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                "growth_interval": 2000, "_growth_tracker": 0}, out / "scaler.pt")
    torch.save({"step": 3, "random_state": random.getstate(),
                "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state()}, out / "random_states_0.pkl")
    torch.save({"ema_decay": 0.999, "shadow": torch.ones(2)}, out / "custom_checkpoint_0.pkl")
    # things a checkpoint folder also holds that are not checkpoints
    (out / "README.md").write_text("notes")
    (out / "config.json").write_text("{}")
    (out / "empty.bin").write_bytes(b"")
    (out / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    (out / "sub").mkdir()
    torch.save({"x": torch.ones(1)}, out / "sub" / "nested.pt")
    return out


def test_checkpoint_files_are_the_accelerate_files(accelerate_dir: Path) -> None:
    assert checkpoint_files(str(accelerate_dir)) == ACCELERATE_FILES
    assert detect_format(accelerate_dir) is Format.FOLDER


def test_keys_are_file_name_dot_inner_key(accelerate_dir: Path) -> None:
    with open_checkpoint(accelerate_dir) as reader:
        assert isinstance(reader, FolderReader)
        keys = [e.key for e in reader.entries()]
        assert "model.safetensors.weight" in keys
        assert "optimizer.bin.state.0.exp_avg" in keys
        assert "optimizer.bin.param_groups.0.lr" in keys
        assert "scheduler.bin.last_epoch" in keys
        assert "random_states_0.pkl.torch_manual_seed" in keys
        assert {k.split(".pkl")[0] for k in keys if ".pkl" in k} == {
            "custom_checkpoint_0", "random_states_0"}
        files = {reader.split_key(k)[0] for k in keys}
        assert files == set(ACCELERATE_FILES)


def test_load_dispatches_to_the_file(accelerate_dir: Path) -> None:
    model = torch.load(accelerate_dir / "optimizer.bin", weights_only=True)
    with open_checkpoint(accelerate_dir) as reader:
        assert torch.equal(reader.load("optimizer.bin.state.0.exp_avg"),
                           model["state"][0]["exp_avg"])
        assert torch.equal(reader.load("random_states_0.pkl.torch_manual_seed"),
                           torch.load(accelerate_dir / "random_states_0.pkl",
                                      weights_only=False)["torch_manual_seed"])
        assert reader.load("custom_checkpoint_0.pkl.shadow").tolist() == [1.0, 1.0]
        w = reader.load("model.safetensors.weight")
        assert w.shape == (2, 3)
        with pytest.raises(KeyError):
            reader.load("nothing.bin.x")
        with pytest.raises(KeyError):
            reader.load("model.safetensors.nope")


def test_tree_flattens_to_the_entry_keys(accelerate_dir: Path) -> None:
    with open_checkpoint(accelerate_dir) as reader:
        tree = reader.tree()
        assert list(tree) == ACCELERATE_FILES
        leaves = dict(iter_leaves(tree))
        tensor_keys = [e.key for e in reader.tensor_entries()]
        assert [k for k, v in leaves.items() if isinstance(v, TensorRef)] == tensor_keys
        assert all(leaves[k] == TensorRef(k) for k in tensor_keys)
        assert set(leaves) == {e.key for e in reader.entries()}
        # a dotted --key picks one file's content
        assert get_path(tree, "optimizer.bin.param_groups.0.lr") == 0.01
        assert set(get_path(tree, "scheduler.bin")) >= {"last_epoch", "base_lrs"}


def test_locations_and_metadata_name_the_file(accelerate_dir: Path) -> None:
    with open_checkpoint(accelerate_dir) as reader:
        where = {e.key: e.location for e in reader.tensor_entries()}
        assert where["model.safetensors.weight"] == "model.safetensors"
        assert where["optimizer.bin.state.0.exp_avg"].startswith("optimizer.bin/")
        assert reader.metadata() == {"model.safetensors.format": "pt"}
        src = reader.raw_source("model.safetensors.bias")
        assert src is not None and src.path.endswith("model.safetensors")
        # numpy's RNG state pickles numpy globals; they are reported with their file
        numpy_globals = [g for g in reader.pickle_globals() if g.module.startswith("numpy")]
        assert numpy_globals and all(g.pickle.startswith("random_states_0.pkl/")
                                     for g in numpy_globals)


def test_object_values_are_read_without_unpickling(accelerate_dir: Path) -> None:
    with open_checkpoint(accelerate_dir) as reader:
        objects = {e.key: e for e in reader.object_entries()}
    assert objects["random_states_0.pkl.step"] == ObjectEntry("random_states_0.pkl.step", "int", 3)
    assert objects["scaler.pt.scale"].value == 65536.0


def test_unsafe_member_is_listed_not_executed(tmp_path: Path, canary: Path) -> None:
    torch.save(malicious_state(canary), tmp_path / "optimizer.bin")
    torch.save({"w": torch.ones(1)}, tmp_path / "model.pt")
    with open_checkpoint(tmp_path) as reader:
        assert any(isinstance(e, TensorEntry) and e.key == "optimizer.bin.weight"
                   for e in reader.entries())
        assert any(g.safety == "unsafe" for g in reader.pickle_globals())


def test_longest_file_name_wins(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(1)}, tmp_path / "a.pt")
    torch.save({"x": torch.ones(1)}, tmp_path / "a.pt.x.pt")
    with FolderReader(tmp_path) as reader:
        assert reader.split_key("a.pt.x.pt.x") == ("a.pt.x.pt", "x")
        assert reader.load("a.pt.x").tolist() == [0.0]
        assert reader.load("a.pt.x.pt.x").tolist() == [1.0]


def test_folder_without_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "weights.bin").write_bytes(b"not a checkpoint")
    assert checkpoint_files(str(tmp_path)) == []
    with pytest.raises(UnknownFormatError, match="no checkpoint in it"):
        open_checkpoint(tmp_path)
    with pytest.raises(UnknownFormatError, match="no checkpoint in it"):
        FolderReader(tmp_path)
