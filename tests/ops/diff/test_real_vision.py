"""Real timm ViT checkpoints (issue #12): a new head, a new image size, both. Runs in the
vision env (``-m vision``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests._real_cases import build
from tests.ops.diff._case_checks import check_case

pytestmark = [pytest.mark.vision, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.mark.parametrize("name", ["vit-classes", "vit-img", "vit-both"])
def test_timm(name: str, tmp_path: Path) -> None:
    case = build(name, tmp_path)
    plan = check_case(case, tmp_path)
    kinds = [s["kind"] for s in plan["steps"]]
    if "resample-pos-embed" in kinds:
        # never dropped: the learned embedding is resampled to the new grid
        assert not any("pos_embed" in s["args"][0] for s in plan["steps"] if s["kind"] == "drop")
        assert "resample_abs_pos_embed" in plan["python"] and plan["command"] is None
    advice = plan["advice"][0]
    assert advice["framework"] == "timm"
    assert "pretrained_cfg_overlay=dict(file=" in advice["code"]
    # timm's own loader with the advised arguments (plus those the model was built with)
    import timm  # noqa: F401  (the advice names it)

    code = advice["code"].replace(")  # plus", ", depth=1)  # plus")
    scope: dict[str, object] = {"timm": timm}
    exec(code, scope)
    loaded = scope["model"]
    source = case.model().__class__  # same architecture
    assert isinstance(loaded, source)
    from safetensors.torch import load_file

    sd = load_file(str(case.path))
    assert torch.equal(loaded.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
