"""Tensors saved in chunks by several ranks are assembled by byte ranges: each chunk's bytes are
copied from its ``.distcp`` file (or ZeRO partition) into their place of the output, so a
conversion never loads a tensor (no torch import at all) and still equals the frameworks' own
consolidation. Checkpoints come from real 2-rank runs (gloo): FSDP2, DTensors sharded on every
kind of dimension, DeepSpeed ZeRO-3."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ckpttools.formats.dcp_dir import DcpReader
from ckpttools.formats.registry import open_checkpoint
from ckpttools.keypaths import iter_leaves
from tests.frameworks.test_deepspeed import deepspeed_reference

pytestmark = [pytest.mark.dist, pytest.mark.frameworks]
Layouts = Callable[[str], Path]
ROOT = Path(__file__).resolve().parents[2]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _convert_without_torch(src: Path, dest: Path) -> None:
    """``convert`` (verified) in a fresh Python that must never import torch: no tensor is
    loaded, every byte goes by range."""
    code = ("import sys; from ckpttools.ops.convert.conversion import convert_checkpoint as c; "
            "r = c(sys.argv[1], sys.argv[2]); assert r.ok and r.verified, r.mismatches; "
            "assert 'torch' not in sys.modules, 'a tensor was loaded'")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(dest)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def _reference(folder: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(folder), str(tmp_path / "torch.pt"))
    leaves = iter_leaves(torch.load(tmp_path / "torch.pt", weights_only=False))
    return {k: v for k, v in leaves if isinstance(v, torch.Tensor)}


def test_tensor_parallel_chunks_tile_by_ranges(layouts: Layouts, tmp_path: Path) -> None:
    folder = layouts("dcp_tp2")
    reference = _reference(folder, tmp_path)
    with DcpReader(folder) as reader:
        for key, tensor in reference.items():
            pieces = reader.raw_pieces(key)
            assert pieces, key  # sharded on dim 0, 1, -1 and a middle dim: all by ranges
            assert sum(p.length for p in pieces) == tensor.numel() * tensor.element_size()
            assert torch.equal(_bits(reader.load(key)), _bits(tensor)), key
        # column shards interleave: one range per row and rank
        assert len(reader.raw_pieces("tp.col") or ()) == 14
    for name in ("one.safetensors", "one.pth"):
        _convert_without_torch(folder, tmp_path / name)
    from safetensors.torch import load_file

    for written in (load_file(tmp_path / "one.safetensors"),
                    dict(iter_leaves(torch.load(tmp_path / "one.pth", weights_only=True)))):
        assert set(reference) <= set(written)
        for key, tensor in reference.items():
            assert written[key].dtype == tensor.dtype and written[key].shape == tensor.shape
            assert torch.equal(_bits(written[key]), _bits(tensor)), key


def test_fsdp_checkpoint_converts_without_loading_a_tensor(layouts: Layouts,
                                                            tmp_path: Path) -> None:
    folder = layouts("dcp2")
    reference = _reference(folder, tmp_path)
    with open_checkpoint(folder) as reader:
        chunked = [e.key for e in reader.tensor_entries() if "," in e.location]
        assert len(chunked) >= 8 and all(reader.raw_pieces(k) for k in chunked)
    _convert_without_torch(folder, tmp_path / "one.safetensors")
    from safetensors.torch import load_file

    written = load_file(tmp_path / "one.safetensors")
    for key, tensor in reference.items():
        assert torch.equal(_bits(written[key]), _bits(tensor)), key


def test_zero3_partitions_copied_slice_by_slice(layouts: Layouts, tmp_path: Path) -> None:
    folder = layouts("zero3x2")
    reference = deepspeed_reference(folder, tmp_path / "ds.pt")
    with open_checkpoint(folder) as reader:
        split = [k for k in reference if reader.raw_pieces(k)]
        assert len(split) >= 4  # every parameter of more than one element spans both ranks
    _convert_without_torch(folder, tmp_path / "one.safetensors")
    from safetensors.torch import load_file

    written = load_file(tmp_path / "one.safetensors")
    assert set(written) == set(reference)
    for key, tensor in reference.items():
        assert torch.equal(_bits(written[key]), _bits(tensor)), key
