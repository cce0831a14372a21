"""``convert --dtype`` casts weights and moments, never an optimizer's step counter: torch keeps
it a float32 tensor and adds 1 to it each step, which bfloat16 stops doing at 256."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.convert.conversion import convert_checkpoint  # noqa: E402


def _trained(steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(4, 3)).sum().backward()
        opt.step()
    return net, opt


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_optimizer_step_counters_keep_their_dtype_and_value(tmp_path: Path, dtype: str) -> None:
    net, opt = _trained(2)
    for st in opt.state.values():  # as after 2049 steps (exact in neither bfloat16 nor float16)
        st["step"].fill_(2049)
    src, out = tmp_path / "train.pt", tmp_path / "train-cast.pt"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, src)
    result = convert_checkpoint(str(src), str(out), dtype=dtype)
    assert result.ok and result.verified
    back = torch.load(out, weights_only=True)
    state = back["optimizer"]["state"][0]
    assert state["step"].dtype == torch.float32 and state["step"].item() == 2049
    assert state["exp_avg"].dtype != torch.float32  # the moments are cast as asked
    assert "optimizer.state.0.step" not in result.cast
    # the resumed optimizer counts on from 2049
    _, resumed = _trained(0)
    resumed.load_state_dict(back["optimizer"])
    assert resumed.state_dict()["state"][0]["step"].item() == 2049
