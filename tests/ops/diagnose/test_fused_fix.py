"""From files, a fused q/k/v projection on one side and separate ones on the other gets a fix
that keeps the saved attention: the cause's snippet runs as printed and the loaded model
computes what the saved one did (the plan alone drops those weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from ckpttools.cli.main import cli

DIM, HEADS = 16, 4


class MHANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.out = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(x, x, x, need_weights=False)[0])


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    split = [t.unflatten(-1, (HEADS, DIM // HEADS)).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2)


class SplitAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(DIM, DIM) for _ in range(3))
        self.out_proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(_attend(self.q_proj(x), self.k_proj(x), self.v_proj(x)))


class SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = SplitAttention()
        self.out = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(x))


class FusedAttention(nn.Module):  # timm's layout: one qkv linear, rows q, k, v
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.out_proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(_attend(*self.qkv(x).chunk(3, dim=-1)))


class FusedNet(SplitNet):
    def __init__(self) -> None:
        super().__init__()
        self.attn = FusedAttention()  # type: ignore[assignment]


@pytest.mark.parametrize(("saved_cls", "model_cls"), [(MHANet, SplitNet), (SplitNet, FusedNet),
                                                      (FusedNet, SplitNet)])
def test_fused_projection_fix_keeps_the_saved_attention(tmp_path: Path, saved_cls: type,
                                                        model_cls: type) -> None:
    torch.manual_seed(0)
    saved = saved_cls().eval()
    path = tmp_path / "saved.pth"
    torch.save(saved.state_dict(), path)
    r = CliRunner().invoke(cli, ["diagnose", "--checkpoint", str(path), "--model",
                                 f"{__file__}:{model_cls.__name__}", "--format", "json"])
    cause = json.loads(r.stdout)["causes"][0]
    assert cause["label"] == "fused_projection" and cause["confidence"] >= 0.8
    plan = json.loads(r.stdout)["plan"]
    assert cause["fix"]["code"] != plan["python"] and cause["fix"]["command"] is None
    if saved_cls is MHANet:  # diff --model's plan drops in_proj_ and says where the fix is
        assert "gives the fix that cuts them" in plan["steps"][0]["summary"]
    model = model_cls().eval()
    exec(cause["fix"]["code"], {"model": model})  # as printed: a strict load
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        torch.testing.assert_close(model(x), saved(x))


def test_interleaved_layout_gets_no_cutting_fix(tmp_path: Path) -> None:
    """GPT-NeoX's query_key_value interleaves q, k, v per head: cutting rows would be wrong."""

    class NeoX(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query_key_value = nn.Linear(DIM, 3 * DIM)

    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(DIM, DIM) for _ in range(3))

    from ckpttools.ops.diagnose.diagnosis import diagnose_checkpoint

    sd = NeoX().state_dict()
    result = diagnose_checkpoint(sd, Split())
    codes = [c.fix_code for c in result.causes]
    assert result.plan is not None and all(".split(" not in c for c in codes)
