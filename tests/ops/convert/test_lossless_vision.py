"""Lossless round trips of timm models' state_dicts (BatchNorm-heavy, versioned submodules),
built from their configs (no weights downloaded); run in the vision environment."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from tests.ops.convert.strict import assert_identical  # noqa: E402
from tests.ops.convert.test_lossless import PATHS, run_path  # noqa: E402

pytestmark = [pytest.mark.vision,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", ["resnet10t", "vit_tiny_patch16_224"])
def test_timm_round_trip_is_identical(tmp_path: Path, name: str, path: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3)
    src = tmp_path / "timm.pth"
    torch.save({"state_dict": model.state_dict(), "arch": name, "epoch": 1}, src)
    back = run_path(tmp_path, src, PATHS[path])
    assert_identical(torch.load(src, weights_only=True), back)
    assert hasattr(back["state_dict"], "_metadata")
