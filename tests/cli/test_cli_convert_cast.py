"""What ``convert --dtype`` says it verified: the cast tensors equal the source rounded to the
new dtype (checked against torch's own cast), never "every tensor bit for bit"."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli


def test_cast_conversion_does_not_claim_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {"w": torch.randn(4, 3), "ids": torch.arange(3)}
    torch.save(state, tmp_path / "a.pt")
    r = CliRunner().invoke(cli, ["convert", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),
                                 "--dtype", "bf16"])
    assert r.exit_code == 0, r.output
    back = torch.load(tmp_path / "b.pt", weights_only=True)
    assert not torch.equal(back["w"].float(), state["w"])  # rounded: not the source's bits
    assert torch.equal(back["w"], state["w"].to(torch.bfloat16))
    assert "every tensor bit for bit" not in r.stdout
    assert ("the values of the 1 cast tensor are the source's rounded to bfloat16, the others "
            "bit for bit") in r.stdout
