"""A tensor inside a tuple of a torch-written DCP folder: DCP pickles the tuple into a bytes item,
so the tensor is no tensor item of the checkpoint. ``convert`` says that in its one line (it
named an internal class) and leaves it out on request."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from ckpttools.cli.main import cli  # noqa: E402


def _dcp(tmp_path: Path) -> Path:
    folder = tmp_path / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"w": torch.arange(4.0), "pair": (torch.ones(2), 3)}, checkpoint_id=str(folder))
    return folder


def test_tensor_pickled_inside_a_value_is_named_for_what_it_is(tmp_path: Path) -> None:
    out = tmp_path / "out.pt"
    result = CliRunner().invoke(cli, ["convert", str(_dcp(tmp_path)), str(out)])
    assert result.exit_code == 2 and not out.exists()
    line = result.stderr.strip()
    assert "\n" not in line and "Placeholder" not in line, line
    assert "pair.0: a tensor pickled inside a value" in line and "--drop-unrepresentable" in line


def test_drop_unrepresentable_leaves_it_out(tmp_path: Path) -> None:
    out = tmp_path / "out.pt"
    result = CliRunner().invoke(cli, ["convert", str(_dcp(tmp_path)), str(out),
                                      "--drop-unrepresentable"])
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    assert torch.equal(state["w"], torch.arange(4.0)) and state["pair"] == (None, 3)
