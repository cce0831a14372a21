"""The CheckpointReader contract, run on every Format member.

Each format's checkpoint is written by its real library through ``conftest.write_checkpoint``;
a new Format member makes these tests run on it (and fail until write_checkpoint can write it).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckpttools.entries import TensorEntry, TensorRef
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.folder import FolderReader
from ckpttools.formats.registry import detect_format, open_checkpoint
from ckpttools.keypaths import iter_leaves
from tests.conftest import write_checkpoint

# a DeepSpeed ZeRO checkpoint holds only what ZeRO writes (fp32 parameters, buffers), not this
# contract's dtypes; tests/frameworks/test_deepspeed.py checks its reader on real ZeRO runs
FORMATS = [f for f in Format if f is not Format.DEEPSPEED]
IDS = [f.value for f in FORMATS]


def contract_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "encoder.layer.0.weight": torch.randn(4, 3, generator=g),
        "encoder.layer.0.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "encoder.layer.1.weight": torch.randn(2, 2, 2, generator=g).to(torch.float16),
        "encoder.norm.weight": torch.randn(5, generator=g).double(),
        "embed.ids": torch.arange(7),
        "mask": torch.tensor([True, False, True]),
        "quant.table": torch.arange(10, dtype=torch.uint8),
        "quant.offsets": torch.tensor([-3, 4], dtype=torch.int8),
        "scale": torch.tensor(0.5),
    }


def state_key(reader: CheckpointReader, key: str) -> str:
    """The key in the written state of a reader key (a folder prefixes the file name)."""
    return reader.split_key(key)[1] if isinstance(reader, FolderReader) else key


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


@pytest.fixture(params=FORMATS, ids=IDS)
def written(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Format, Path]:
    fmt: Format = request.param
    return fmt, write_checkpoint(fmt.value, contract_state(), tmp_path)


def test_detects_and_opens_with_its_reader(written: tuple[Format, Path]) -> None:
    fmt, path = written
    assert detect_format(path) is fmt
    with open_checkpoint(path) as reader:
        assert reader.format is fmt
        assert reader.path == str(path)


def test_entries_match_the_written_state(written: tuple[Format, Path]) -> None:
    fmt, path = written
    state = contract_state()
    with open_checkpoint(path) as reader:
        tensors = reader.tensor_entries()
        assert sorted(state_key(reader, e.key) for e in tensors) == sorted(state)
        for e in tensors:
            t = state[state_key(reader, e.key)]
            assert e.dtype == str(t.dtype).removeprefix("torch."), e.key
            assert e.shape == tuple(t.shape), e.key
            assert e.nbytes == t.numel() * t.element_size(), e.key
            assert e.numel == t.numel()
        assert reader.entries() == reader.entries()
        assert len({e.key for e in reader.entries()}) == len(reader.entries())
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in reader.metadata().items())


def test_load_is_bit_exact_on_cpu(written: tuple[Format, Path]) -> None:
    fmt, path = written
    state = contract_state()
    with open_checkpoint(path) as reader:
        for e in reader.tensor_entries():
            loaded = reader.load(e.key)
            assert isinstance(loaded, torch.Tensor) and loaded.device.type == "cpu"
            assert same_bits(loaded, state[state_key(reader, e.key)]), e.key
        with pytest.raises(KeyError):
            reader.load("no.such.key")


def test_raw_source_holds_the_tensor_bytes(written: tuple[Format, Path]) -> None:
    fmt, path = written
    with open_checkpoint(path) as reader:
        for e in reader.tensor_entries():
            src = reader.raw_source(e.key)
            if src is None:
                continue
            with open(src.path, "rb") as f:
                f.seek(src.offset)
                data = f.read(src.length)
            expected = reader.load(e.key).contiguous().reshape(-1).view(torch.uint8)
            assert data[: e.nbytes] == bytes(expected.tolist()), e.key


def test_tree_flattens_to_the_entry_keys(written: tuple[Format, Path]) -> None:
    fmt, path = written
    with open_checkpoint(path) as reader:
        leaves = dict(iter_leaves(reader.tree()))
        for e in reader.tensor_entries():
            assert leaves.get(e.key) == TensorRef(e.key), e.key
        tensor_leaves = {k for k, v in leaves.items() if isinstance(v, TensorRef)}
        assert tensor_leaves == {e.key for e in reader.tensor_entries()}


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count files")
def test_context_manager_closes_files(written: tuple[Format, Path]) -> None:
    fmt, path = written
    gc.collect()
    before = _open_fds()
    with open_checkpoint(path) as reader:
        reader.entries()
        key = reader.tensor_entries()[0].key
        value = reader.load(key).clone()
    del reader
    gc.collect()
    assert _open_fds() <= before
    assert value.numel() > 0


def test_listing_does_not_import_torch(written: tuple[Format, Path]) -> None:
    fmt, path = written
    code = ("import sys\n"
            "from ckpttools.formats.registry import open_checkpoint\n"
            f"with open_checkpoint({str(path)!r}) as r:\n"
            "    assert r.entries()\n"
            "    r.tree()\n"
            "assert 'torch' not in sys.modules, 'listing imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_entries_are_tensor_or_object_entries(written: tuple[Format, Path]) -> None:
    fmt, path = written
    with open_checkpoint(path) as reader:
        assert reader.tensor_entries() and all(isinstance(e, TensorEntry)
                                               for e in reader.tensor_entries())
        assert set(reader.tensor_entries()) | set(reader.object_entries()) == set(reader.entries())
