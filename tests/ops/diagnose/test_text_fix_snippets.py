"""The fix snippet ``diagnose`` prints for a pasted error runs as printed: each case saves a real
checkpoint, takes the real ``load_state_dict`` error, diagnoses the text, puts the checkpoint's path
where the snippet says ``CKPT`` (the text cannot name the file) and runs the snippet with only
``model`` defined; the model then holds the checkpoint's tensors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text


class Net(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 8)
        self.head = nn.Linear(8, classes)


def _seeded(**kwargs: Any) -> Net:
    torch.manual_seed(0)
    return Net(**kwargs)


def _error(model: nn.Module, state: Any) -> str:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        return f"Traceback (most recent call last):\n  ...\nRuntimeError: {e}"
    raise AssertionError("the state loaded; the case builds no error")


def _prefix_added(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = nn.DataParallel(_seeded()).state_dict()
    torch.save(sd, path)
    return Net(), {k.removeprefix("module."): v for k, v in sd.items()}


def _prefix_missing(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()
    torch.save(sd, path)
    return nn.DataParallel(Net()), {f"module.{k}": v for k, v in sd.items()}


def _wrapped(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    return Net(), dict(sd)


def _new_head(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded(classes=10).state_dict()
    torch.save(sd, path)
    return Net(classes=4), {k: v for k, v in sd.items() if not k.startswith("head.")}


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Net()
        del self.backbone.head
        self.neck = nn.Linear(8, 8)
        self.bbox_head = nn.Linear(8, 4)


def _backbone_file(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()  # a classification network's file, passed to the detector
    torch.save(sd, path)
    return Detector(), {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("head.")}


class _Lin(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.lin = nn.Linear(inputs, outputs)


class NetLin(Net):
    """Net with its Linear layers one module down (``fc.lin.weight``), as a library rename does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = _Lin(4, 8), _Lin(8, 4)


def _renamed(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()
    torch.save(sd, path)
    moved = {k.replace("fc.", "fc.lin.").replace("head.", "head.lin."): v for k, v in sd.items()}
    return NetLin(), moved


CASES: dict[str, Callable[[Path], tuple[nn.Module, dict[str, torch.Tensor]]]] = {
    "prefix_added": _prefix_added, "prefix_missing": _prefix_missing,
    "wrapped_checkpoint": _wrapped, "head_size_mismatch": _new_head, "wrong_model": _backbone_file,
    "renamed_keys": _renamed,
}


@pytest.mark.parametrize("label", list(CASES))
def test_text_fix_snippet_runs_as_printed(tmp_path: Path, label: str) -> None:
    path = tmp_path / "ckpt.pth"
    model, expected = CASES[label](path)
    saved = torch.load(path, weights_only=True)
    result = diagnose_text(_error(model, saved))
    top = result.causes[0]
    assert top.label == label
    assert "CKPT" in top.fix_code, top.fix_code  # the text cannot name the file; CKPT stands for it
    code = top.fix_code.replace("CKPT", str(path))
    scope: dict[str, Any] = {"model": model}
    exec(compile(code, f"<diagnose fix for {label}>", "exec"), scope)
    loaded = scope["model"].state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("how", ["spectral_norm", "weight_norm"])
def test_reparametrized_checkpoint_snippet_loads_every_weight(tmp_path: Path, how: str) -> None:
    # the fix for a layer saved reparametrized is that parametrization on the model, not
    # strict=False (which would leave the layer's weight at its initial values)
    trained = _seeded()
    getattr(torch.nn.utils, how)(trained.fc)
    path = tmp_path / "ckpt.pth"
    torch.save(trained.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    top = diagnose_text(_error(Net(), saved)).causes[0]
    assert top.label == "version_buffers" and "strict=False" not in top.fix_code, top.fix_code
    scope: dict[str, Any] = {"model": Net()}
    exec(compile(top.fix_code.replace("CKPT", str(path)), f"<fix for {how}>", "exec"), scope)
    loaded = scope["model"].state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
