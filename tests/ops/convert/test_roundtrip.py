"""Round trips .pth -> safetensors -> .pth and .pth -> dcp -> .pth, bit for bit."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402

DTYPES = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8",
          "int16", "int32", "int64", "uint8", "bool", "complex64"]


def _tensor(dtype: str, shape: tuple[int, ...]) -> Any:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g, dtype=torch.float64) * 50
    if dtype == "bool":
        return t > 0
    if dtype == "complex64":
        return torch.complex(t.float(), -t.float())
    return t.to(getattr(torch, dtype))


def matrix_state() -> dict[str, Any]:
    state: dict[str, Any] = {f"t.{d}": _tensor(d, (3, 5)) for d in DTYPES}
    base = torch.randn(6, 8)
    state.update({"scalar": torch.tensor(2.5), "empty": torch.empty(0, 4), "big": torch.randn(300_000),
                  "tied.a": base, "tied.b": base, "view.T": base.T, "view.slice": base[2:4, 1:5],
                  "col": base[:, 3], "dots.in.name": torch.ones(2), "ünï.ñame": torch.zeros(3)})
    return state


def training_state() -> dict[str, Any]:
    from tests._models import tiny_net

    model = tiny_net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    model(torch.randn(2, *_input_shape(model))).sum().backward()
    opt.step()
    sched.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": 3, "loss": 0.125,
            "meta": (None, [1, 2], OrderedDict(a=1), {0: "x", "0": "y"})}


def _input_shape(model: Any) -> tuple[int, ...]:
    first = next(p for p in model.parameters() if p.dim() >= 2)
    return (first.shape[1],) if first.dim() == 2 else (first.shape[1], 8, 8)


def assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert a.stride() == b.stride() and a.storage_offset() == b.storage_offset(), path
        assert torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                           b.contiguous().reshape(-1).view(torch.uint8)), path
        return
    assert type(a) is type(b) or isinstance(a, dict) and isinstance(b, dict), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}.{i}")
    else:
        assert a == b, path


def _round_trip(tmp_path: Path, state: dict[str, Any], mid: str) -> Any:
    src = tmp_path / "src.pth"
    torch.save(state, src)
    middle = tmp_path / ("mid.safetensors" if mid == "safetensors" else "mid.dcp")
    assert convert_checkpoint(str(src), str(middle), to=mid).ok
    back = tmp_path / "back.pth"
    assert convert_checkpoint(str(middle), str(back)).ok
    return torch.load(back, weights_only=True)


@pytest.mark.parametrize("mid", ["safetensors", "dcp"])
def test_matrix_round_trip_bitwise(tmp_path: Path, mid: str) -> None:
    state = matrix_state()
    back = _round_trip(tmp_path, state, mid)
    assert_same(state, back)
    assert back["tied.a"].untyped_storage().data_ptr() == back["tied.b"].untyped_storage().data_ptr()
    assert back["view.slice"].untyped_storage().data_ptr() == back["tied.a"].untyped_storage().data_ptr()


@pytest.mark.parametrize("mid", ["safetensors", "dcp"])
def test_training_checkpoint_round_trip(tmp_path: Path, mid: str) -> None:
    state = training_state()
    assert_same(state, _round_trip(tmp_path, state, mid))


def test_plain_consumer_reads_natural_names(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tests._models import tiny_net

    model = tiny_net()
    src = tmp_path / "m.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "m.safetensors"
    assert convert_checkpoint(str(src), str(out)).ok
    fresh = tiny_net(seed=1)
    fresh.load_state_dict(load_file(str(out)))
    assert_same(dict(model.state_dict()), dict(fresh.state_dict()))


def test_sharded_set_reads_like_transformers(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = {f"layer.{i}.weight": torch.randn(64, 64) for i in range(6)}
    src = tmp_path / "m.pth"
    torch.save(state, src)
    out = tmp_path / "sharded"
    result = convert_checkpoint(str(src), str(out), to="safetensors", max_shard_size="40KB")
    assert result.ok and len(result.files) == 4  # 3 shards of 2 tensors + index
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 64 * 64 * 4
    loaded: dict[str, Any] = {}
    for name in sorted(set(index["weight_map"].values())):
        loaded.update(load_file(str(out / name)))
    assert set(loaded) == set(index["weight_map"]) == set(state)
    assert_same(state, {k: loaded[k] for k in state})
    back = tmp_path / "back.pth"
    assert convert_checkpoint(str(out), str(back)).ok
    assert_same(state, torch.load(back, weights_only=True))


def test_numpy_rng_state_survives(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    state = {"w": torch.ones(2), "rng": np.random.RandomState(0).get_state(), "s": np.int64(7)}
    src = tmp_path / "a.pth"
    torch.save(state, src)
    out = tmp_path / "a.safetensors"
    assert convert_checkpoint(str(src), str(out)).ok
    back = tmp_path / "b.pth"
    assert convert_checkpoint(str(out), str(back)).ok
    got = torch.load(back, weights_only=False)  # our own output; numpy needs full unpickling
    assert got["rng"][0] == "MT19937" and (got["rng"][1] == state["rng"][1]).all()
    assert got["rng"][2:] == state["rng"][2:] and got["s"] == 7
