"""A timm model and a checkpoint shaped like timm's train.py CheckpointSaver writes scan safe."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ckpttools.ops.audit.scan import scan_checkpoint

pytestmark = [pytest.mark.vision, pytest.mark.filterwarnings("ignore")]


def test_timm_checkpoints_scan_safe(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    import torch

    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    # timm.utils.CheckpointSaver: epoch, arch, state_dict, optimizer, version, args, metric
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(), "version": 2,
                "args": argparse.Namespace(model="resnet18", lr=0.1), "metric": 0.5},
               tmp_path / "checkpoint-1.pth.tar")
    result = scan_checkpoint(tmp_path)
    assert result.exit_code == 0 and len(result.files) == 2, result.to_dict()
