"""Shared fixtures: a CLI runner, a tiny seeded model, a checkpoint factory and test assets."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def runner() -> CliRunner:
    """A ``CliRunner`` that keeps stdout and stderr apart."""
    return CliRunner()


@pytest.fixture
def tiny_model() -> Any:
    """A seeded ``TinyNet`` (dims under 16, realistic key names)."""
    from tests._models import tiny_net

    return tiny_net()


@pytest.fixture
def asset() -> Callable[[str], Path]:
    """Path of a checked-in file under ``tests/fixtures/``."""

    def _asset(name: str) -> Path:
        path = FIXTURES / name
        assert path.exists(), f"missing test asset {name}; run scripts/make_fixtures.py"
        return path

    return _asset


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = list(state)
    half = max(1, len(keys) // 2)
    return {k: state[k] for k in keys[:half]}, {k: state[k] for k in keys[half:]}


def write_checkpoint(fmt: str, state: dict[str, Any], dest: Path) -> Path:
    """Write ``state`` with the real library of format ``fmt`` under folder ``dest``.

    Sharded formats split the keys into two shards with an index; ``dcp`` uses
    ``torch.distributed.checkpoint.save`` in this one process.
    """
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    if fmt == "torch-zip":
        path = dest / "model.pth"
        torch.save(state, path)
    elif fmt == "torch-legacy":
        path = dest / "model.pt"
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        path = dest / "model.safetensors"
        save_file(state, str(path), metadata={"format": "pt"})
    elif fmt in ("safetensors-sharded", "torch-sharded"):
        path = dest / "sharded"
        path.mkdir()
        ext = "safetensors" if fmt == "safetensors-sharded" else "bin"
        stem = "model" if ext == "safetensors" else "pytorch_model"
        weight_map: dict[str, str] = {}
        total = 0
        for i, shard in enumerate(_split(state), start=1):
            name = f"{stem}-{i:05d}-of-00002.{ext}"
            if ext == "safetensors":
                from safetensors.torch import save_file

                save_file(shard, str(path / name), metadata={"format": "pt"})
            else:
                torch.save(shard, path / name)
            for k, t in shard.items():
                weight_map[k] = name
                total += t.numel() * t.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    elif fmt == "dcp":
        import torch.distributed.checkpoint as dcp

        path = dest / "dcp"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
            dcp.save(state, checkpoint_id=str(path))
    elif fmt == "folder":
        # accelerate save_state-like: the keys split over a safetensors and a torch.save file
        from safetensors.torch import save_file

        path = dest / "folder"
        path.mkdir()
        first, second = _split(state)
        save_file(first, str(path / "model.safetensors"), metadata={"format": "pt"})
        torch.save(second, path / "optimizer.bin")
    else:
        raise ValueError(f"unknown format {fmt}")
    return path


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """``make_checkpoint(fmt, state, name="ckpt")`` writes a real checkpoint into ``tmp_path``."""

    def _make(fmt: str, state: dict[str, Any], name: str = "ckpt") -> Path:
        return write_checkpoint(fmt, state, tmp_path / name)

    return _make


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A path a malicious pickle would create; tests assert it never appears."""
    path = tmp_path / "CANARY"
    yield path
    assert not path.exists(), "a pickle from a checkpoint was executed"


def malicious_state(canary_path: Path) -> dict[str, Any]:
    """A state_dict whose pickle would create ``canary_path`` when unpickled."""
    import torch

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {canary_path}",))

    return {"weight": torch.zeros(2, 2), "payload": Payload()}
