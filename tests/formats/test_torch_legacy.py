"""TorchLegacyReader on real ``_use_new_zipfile_serialization=False`` files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.formats.torch_legacy import TorchLegacyReader
from ckpttools.keypaths import get_path
from tests.conftest import malicious_state
from tests.formats.test_torch_zip import training_state


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return training_state()


def test_entries_and_values_match(make_checkpoint: Callable[..., Path],
                                  state: dict[str, Any]) -> None:
    path = make_checkpoint("torch-legacy", state)
    with open_checkpoint(path) as reader:
        assert isinstance(reader, TorchLegacyReader)
        for entry in reader.tensor_entries():
            expected = get_path(state, entry.key).detach()
            got = reader.load(entry.key)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8)) \
                if got.dtype == torch.float8_e4m3fn else torch.equal(got, expected)
            src = reader.raw_source(entry.key)
            if src is not None and entry.nbytes:
                with open(src.path, "rb") as f:
                    f.seek(src.offset)
                    raw = expected.contiguous().reshape(-1).view(torch.uint8)
                    assert f.read(src.length) == bytes(raw.tolist())
        objects = {e.key: e.value for e in reader.object_entries()}
        assert objects["args"] == {"__class__": "argparse.Namespace", "lr": 0.1, "epochs": 2}
        assert objects["epoch"] == 3


def test_malicious_legacy_pickle_is_flagged(tmp_path: Path, canary: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save(malicious_state(canary), path, _use_new_zipfile_serialization=False)
    with open_checkpoint(path) as reader:
        assert [g.qualname for g in reader.pickle_globals() if g.safety == "unsafe"] in (
            ["posix.system"], ["os.system"])
        assert torch.equal(reader.load("weight"), torch.zeros(2, 2))


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_truncated_legacy_file_is_corrupt(tmp_path: Path, cut: float) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(64), "b": torch.zeros(3)}, path,
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CorruptCheckpointError, match="old.pt") as info:
        with open_checkpoint(path) as reader:
            for e in reader.tensor_entries():
                reader.load(e.key)
    assert "\n" not in str(info.value)
