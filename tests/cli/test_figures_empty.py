"""``inspect --plot`` of a checkpoint without tensors, or whose tensors hold no data (saved from
a meta-device model): matplotlib's "No artists with labels found to put in legend" reached
stderr as a ckpttools warning, and the bars were blank; the figure now says what is empty."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.render._checks import svg_root

pytest.importorskip("matplotlib")


@pytest.mark.parametrize(("state", "said"), [
    ({}, ["no tensors", "no tensor bytes stored"]),
    ("meta", ["no tensor bytes stored (meta tensors hold no data)"]),
])
def test_nothing_to_draw_is_said_not_warned(runner: CliRunner, tmp_path: Path, state: object,
                                            said: list[str]) -> None:
    if state == "meta":
        with torch.device("meta"):
            state = torch.nn.Linear(3, 3).state_dict()
    src, out = tmp_path / "c.pt", tmp_path / "c.svg"
    torch.save(state, src)
    result = runner.invoke(cli, ["inspect", str(src), "--stats", "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote the inspect figure to {out}\n"
    svg_root(out)  # a well-formed SVG
    for words in said:
        assert f"<!-- {words} -->" in out.read_text()  # matplotlib's comment on each text
