"""Lossless through every path: torch.load(weights_only=True) of the final .pth equals the source
in container types, key order, _metadata, attributes, tensor bits and storage sharing."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402
from tests.ops.convert.strict import assert_identical  # noqa: E402

# each path is the chain of targets after the source .pth; the last is always pth
PATHS = {
    "safetensors": [("safetensors", None), ("pth", None)],
    "sharded": [("safetensors", "300"), ("pth", None)],
    "dcp": [("dcp", None), ("pth", None)],
    "pth": [("pth", None)],
    "chain": [("safetensors", None), ("dcp", None), ("safetensors", "300"), ("pth", None)],
}


def versioned_modules() -> Any:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    net(torch.randn(2, 3, 3, 3))  # BatchNorm running stats and num_batches_tracked move
    return net.state_dict()


def training_dict() -> dict[str, Any]:
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    base = torch.randn(4, 6)
    return {"model": net.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": 3, "loss": float("nan"),
            "tags": {"a", 1, 2.5}, "param": torch.nn.Parameter(torch.randn(3)),
            "grad_on": torch.randn(2, requires_grad=True),
            "views": (base, base.T, base[1:3, 2:]), "keys": {0: "int", "0": "str"},
            "nested": OrderedDict(inner=OrderedDict(x=torch.ones(1)), empty=OrderedDict())}


SOURCES = {"versioned_modules": versioned_modules, "training_dict": training_dict}


def run_path(tmp_path: Path, src: Path, steps: list[tuple[str, str | None]]) -> Any:
    current = src
    for i, (target, shard) in enumerate(steps):
        out = tmp_path / f"step{i}.{target}"
        result = convert_checkpoint(str(current), str(out), to=target, max_shard_size=shard)
        assert result.ok and result.verified, result.mismatches
        current = out
    return torch.load(current, weights_only=True)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("source", list(SOURCES))
def test_round_trip_is_identical(tmp_path: Path, source: str, path: str) -> None:
    state = SOURCES[source]()
    src = tmp_path / "src.pth"
    torch.save(state, src)
    expected = torch.load(src, weights_only=True)
    back = run_path(tmp_path, src, PATHS[path])
    assert_identical(expected, back)
    if source == "versioned_modules":
        assert type(back) is OrderedDict and back._metadata["1"] == {"version": 2}


@pytest.mark.parametrize("path", ["safetensors", "dcp", "sharded"])
def test_legacy_file_round_trip(tmp_path: Path, path: str) -> None:
    src = tmp_path / "legacy.pth"
    torch.save(versioned_modules(), src, _use_new_zipfile_serialization=False)
    assert_identical(torch.load(src, weights_only=True), run_path(tmp_path, src, PATHS[path]))


def test_manifest_v1_file_still_reads(tmp_path: Path, asset: Any) -> None:
    out = tmp_path / "back.pth"
    assert convert_checkpoint(str(asset("convert/manifest_v1.safetensors")), str(out)).ok
    back = torch.load(out, weights_only=True)
    assert list(back) == ["model", "epoch", "loss", "meta"]
    assert back["meta"] == (None, [1, 2], {0: "x", "0": "y"}) and back["epoch"] == 2
    assert back["model"]["tied"].untyped_storage().data_ptr() == \
        back["model"]["fc.weight"].untyped_storage().data_ptr()


@pytest.mark.filterwarnings("ignore:.*quantiz.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")
def test_quantized_state_dict_is_refused_not_changed(tmp_path: Path) -> None:
    from ckpttools.errors import UnsupportedError

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                       dtype=torch.qint8)
    src = tmp_path / "q.pth"
    torch.save(quantized.state_dict(), src)
    for out in ("q.safetensors", "q2.pth"):
        with pytest.raises(UnsupportedError, match="dtype qint8: .*keep the .pth"):
            convert_checkpoint(str(src), str(tmp_path / out))
        assert not (tmp_path / out).exists()


def test_tensor_attributes_are_refused_not_dropped(tmp_path: Path) -> None:
    from ckpttools.errors import CkptError

    t = torch.ones(2)
    t.note = "calibrated"  # type: ignore[attr-defined]  # torch.load(weights_only) restores it
    src = tmp_path / "a.pth"
    torch.save({"w": t}, src)
    assert torch.load(src, weights_only=True)["w"].note == "calibrated"
    with pytest.raises(CkptError, match=r"^w: a tensor with Python attributes"):
        convert_checkpoint(str(src), str(tmp_path / "a.safetensors"))
    assert not (tmp_path / "a.safetensors").exists()
