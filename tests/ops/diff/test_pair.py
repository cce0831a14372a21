"""diff A B across formats: keys, shapes, dtypes, values within tolerance, non-tensor values."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from pathlib import Path

import pytest
import torch

from ckpttools.errors import UnsupportedError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diff.pair import CheckpointDiffResult, diff_checkpoints
from tests._models import tiny_net

FORMATS = ["torch-zip", "torch-legacy", "safetensors", "dcp"]


def run(a: Path, b: Path, **kw: float) -> CheckpointDiffResult:
    try:
        with open_checkpoint(a) as ra, open_checkpoint(b) as rb:
            return diff_checkpoints(ra, rb, **kw)
    except UnsupportedError as e:  # a reader still being written
        pytest.skip(str(e))


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_weights_in_another_format_match(make_checkpoint: Callable[..., Path],
                                              fmt: str) -> None:
    state = tiny_net().state_dict()
    state = {k: v for k, v in state.items() if v.dim()}  # 0-d counters vary by format
    result = run(make_checkpoint("torch-zip", state, name="a"), make_checkpoint(fmt, state, name="b"))
    assert result.ok, result.verdict
    assert all(t.bitwise_equal and t.max_abs_diff == 0 for t in result.tensors)


def test_values_dtypes_keys_and_objects(make_checkpoint: Callable[..., Path]) -> None:
    a = tiny_net().state_dict()
    b = {k: v.clone() for k, v in a.items()}
    b["head.weight"][0, 0] += 0.5
    b["stem.bias"] = b["stem.bias"].half()
    b["extra"] = torch.zeros(1)
    del b["blocks.1.0.bias"]
    b["bn.weight"] = torch.ones(9)
    pa = make_checkpoint("torch-zip", {"model": a, "epoch": 3, "lr": 0.1}, name="a")
    pb = make_checkpoint("torch-zip", {"model": b, "epoch": 4, "lr": 0.1}, name="b")
    result = run(pa, pb, atol=1e-2)
    assert not result.ok
    assert result.only_a == ("model.blocks.1.0.bias",) and result.only_b == ("model.extra",)
    assert result.shape_differences == (("model.bn.weight", (8,), (9,)),)
    [dtype] = result.dtype_differences
    assert dtype.key == "model.stem.bias" and dtype.allclose and not dtype.bitwise_equal
    [value] = result.value_differences
    assert value.key == "model.head.weight" and value.max_abs_diff == pytest.approx(0.5)
    assert [o.key for o in result.object_differences] == ["epoch"]
    assert "1 value" in result.verdict


def test_tolerance_decides(make_checkpoint: Callable[..., Path]) -> None:
    a = {"w": torch.linspace(1, 2, 1000)}
    b = {"w": a["w"] + 1e-4}
    pa, pb = make_checkpoint("torch-zip", a, name="a"), make_checkpoint("torch-zip", b, name="b")
    assert not run(pa, pb).ok
    close = run(pa, pb, atol=1e-3)
    assert close.ok and not close.tensors[0].bitwise_equal
    assert close.tensors[0].max_rel_diff == pytest.approx(1e-4, rel=0.1)


def test_nan_and_chunking(make_checkpoint: Callable[..., Path],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpttools.ops.diff.pair as dp

    monkeypatch.setattr(dp, "CHUNK_BYTES", 64)  # many chunks on a small tensor
    a = torch.arange(100, dtype=torch.float32)
    a[3] = math.nan
    b = a.clone()
    b[90] += 2
    pa = make_checkpoint("torch-zip", {"w": a, "i": torch.arange(10)}, name="a")
    pb = make_checkpoint("torch-zip", {"w": b, "i": torch.arange(10)}, name="b")
    result = run(pa, pb)
    w = next(t for t in result.tensors if t.key == "w")
    assert w.max_abs_diff == 2 and not w.allclose  # nan on both sides counts as equal
    assert next(t for t in result.tensors if t.key == "i").bitwise_equal


def test_training_checkpoint_against_extracted_weights(make_checkpoint: Callable[..., Path]) -> None:
    state = tiny_net().state_dict()
    pa = make_checkpoint("torch-zip", {"model": state, "epoch": 1}, name="a")
    pb = make_checkpoint("torch-legacy", state, name="b")
    result = run(pa, pb)
    assert result.ok and "compared the state_dicts (A: 'model'" in result.note
    assert result.tensors[0].key == "stem.weight"


def _versioned() -> "OrderedDict[str, torch.Tensor]":
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).state_dict()


def _lost_type(sd: Any) -> Any:
    return dict(sd)


def _lost_version(sd: Any) -> Any:
    out = OrderedDict(sd)
    out._metadata = OrderedDict((k, dict(v)) for k, v in sd._metadata.items())  # type: ignore[attr-defined]
    out._metadata["1"]["version"] = 1  # type: ignore[attr-defined]
    return out


def _reordered(sd: Any) -> Any:
    keys = list(sd)
    out = OrderedDict((k, sd[k]) for k in [keys[1], keys[0], *keys[2:]])
    out._metadata = sd._metadata  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize(("change", "message"), [
    (_lost_type, "<root>: OrderedDict in A, dict in B"),
    (_lost_version, "_metadata['1']['version']: 2 in A, 1 in B"),
    (_reordered, "<root>: key order differs at position 0: '0.weight' in A, '0.bias' in B"),
])
def test_structure_differences_are_named(tmp_path: Path, change: Callable[[Any], Any],
                                         message: str) -> None:
    sd = _versioned()
    torch.save(sd, tmp_path / "a.pth")
    torch.save(change(sd), tmp_path / "b.pth")
    result = run(tmp_path / "a.pth", tmp_path / "b.pth")
    assert not result.ok and result.structure == (message,)
    assert "structure differs" in result.verdict
    assert result.to_dict()["structure_differences"] == [message]


def test_plain_safetensors_is_not_a_structure_difference(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = _versioned()
    torch.save(sd, tmp_path / "a.pth")
    save_file(dict(sd), str(tmp_path / "b.safetensors"))
    result = run(tmp_path / "a.pth", tmp_path / "b.safetensors")
    assert result.ok and result.structure == ()
    assert "structure not compared: B (safetensors)" in result.note
