"""remap to .pth from a torch zip copies storage records as they are: what torch.load gives
for the output equals what it gives for the source, under the new names, with views, shared
storages, dtypes and requires_grad kept; a record failing its CRC is refused."""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.formats.writers.state_dict_zip import copy_plan
from ckpttools.ops.diff.remap import build_rules, remap_checkpoint
from tests._models import tiny_net


def _state() -> dict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {f"module.{k}": v for k, v in tiny_net().state_dict().items()}
    state.update({"module.view": base[1:, ::2], "module.base": base, "module.t": base.t(),
                  "module.half": torch.randn(3, dtype=torch.float16),
                  "module.bf": torch.randn(2, 2, dtype=torch.bfloat16),
                  "module.ints": torch.arange(5), "module.flag": torch.tensor([True, False]),
                  "module.grad": torch.ones(2, requires_grad=True),
                  "module.empty": torch.zeros(0, 3)})
    return state


def test_output_loads_as_the_source_under_new_names(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save(_state(), src)
    with open_checkpoint(str(src)) as reader:
        assert copy_plan(reader, [(k, k) for k in _state()]) is not None  # the copy path runs
    remap_checkpoint(str(src), str(dst), rules=build_rules(strip_prefix="module."))
    before = torch.load(src, weights_only=True)
    after = torch.load(dst, weights_only=True)
    assert list(after) == [k[len("module."):] for k in before]
    for key, value in before.items():
        got = after[key[len("module."):]]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert got.stride() == value.stride() and got.requires_grad == value.requires_grad
        assert torch.equal(got, value)
    # views of one storage stay views of one storage, as torch.load gives them
    assert after["view"].untyped_storage().data_ptr() == after["base"].untyped_storage().data_ptr()
    assert after["t"].untyped_storage().data_ptr() == after["base"].untyped_storage().data_ptr()
    with zipfile.ZipFile(dst) as z:
        assert z.testzip() is None  # every CRC-32 in the output is right


def test_the_copy_path_needs_no_torch(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save(_state(), src)
    code = ("import sys\nfrom ckpttools.ops.diff.remap import build_rules, remap_checkpoint\n"
            "remap_checkpoint(sys.argv[1], sys.argv[2], rules=build_rules(add_prefix='x.'))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(src), str(dst)], check=True,
                   cwd=Path(__file__).resolve().parents[3])
    assert set(torch.load(dst, weights_only=True)) == {f"x.{k}" for k in _state()}


def test_a_record_failing_its_crc_is_refused(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, src)
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    nlen, elen = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's
    at = info.header_offset + 30 + nlen + elen + 8
    data[at] ^= 0xFF  # one byte of the tensor's data, after the archive was written
    src.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="fails its CRC-32"):
        remap_checkpoint(str(src), str(dst), rules=build_rules(add_prefix="m."))
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.pth"]


def test_safetensors_sources_still_go_through_torch_save(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src, dst = tmp_path / "in.safetensors", tmp_path / "out.pth"
    state = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    save_file(state, src)
    with open_checkpoint(str(src)) as reader:
        assert copy_plan(reader, [(k, k) for k in state]) is None
    remap_checkpoint(str(src), str(dst), rules=build_rules(add_prefix="m."))
    after = torch.load(dst, weights_only=True)
    assert all(torch.equal(after[f"m.{k}"], v) for k, v in state.items())
