"""A training checkpoint converted to DCP resumes through torch's own ``dcp.load``: the
optimizer's param_groups, the scheduler's counters and plain values are bytes items under the
FQNs torch's flattening gives them, as ``dcp.save`` stores them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from ckpttools.formats.dcp_dir import DcpReader  # noqa: E402
from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402


def _training(lr: float, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(steps):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "step": steps, "tags": ["a", "b"]}


def _load(folder: Path, target: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True)


@pytest.mark.parametrize("src_kind", ["pth", "dcp"])
def test_dcp_load_restores_the_whole_training_state(tmp_path: Path, src_kind: str) -> None:
    saved = _training(lr=1e-3, steps=3)
    src = tmp_path / ("src.pth" if src_kind == "pth" else "src.dcp")
    if src_kind == "pth":
        torch.save(saved, src)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(src)), no_dist=True)
    out = tmp_path / "out.dcp"
    assert convert_checkpoint(str(src), str(out), to="dcp").ok
    target = _training(lr=0.5, steps=1)  # another run's state, to be overwritten in place
    target["step"], target["tags"] = 0, []
    _load(out, target)
    assert target["step"] == 3 and target["tags"] == ["a", "b"]
    assert target["optimizer"]["param_groups"] == saved["optimizer"]["param_groups"]
    assert target["scheduler"] == saved["scheduler"]
    for key, value in saved["optimizer"]["state"][0].items():
        assert torch.equal(target["optimizer"]["state"][0][key], value)


def test_values_are_listed_once(tmp_path: Path) -> None:
    src = tmp_path / "src.pth"
    torch.save(_training(lr=1e-3, steps=1), src)
    out = tmp_path / "out.dcp"
    assert convert_checkpoint(str(src), str(out), to="dcp").ok
    with DcpReader(str(out)) as reader:
        names = [e.key for e in reader.entries()]
        assert "optimizer.param_groups.0.lr" in reader.value_names()
    assert len(names) == len(set(names))
    assert "scheduler.last_epoch" in names and "step" in names


@pytest.mark.parametrize("state", [
    {"a.b": 1, "a": {"b": torch.ones(1)}},  # a value's FQN is a tensor's name
    {"a.b": 1, "a": {"b": 2}},  # two values' FQNs are one
    {"ckpttools": {"manifest": 5}, "w": torch.ones(1)},  # the manifest's own name
], ids=["tensor", "value", "manifest"])
def test_colliding_fqns_stay_in_the_manifest(tmp_path: Path, state: dict[str, Any]) -> None:
    src, out, back = tmp_path / "src.pth", tmp_path / "out.dcp", tmp_path / "back.pth"
    torch.save(state, src)
    assert convert_checkpoint(str(src), str(out), to="dcp").ok
    assert convert_checkpoint(str(out), str(back)).ok
    assert repr(torch.load(back, weights_only=True)) == repr(state)
