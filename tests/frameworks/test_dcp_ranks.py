"""A DCP checkpoint written by 2 FSDP2 ranks (gloo): every tensor in 2 chunks, 2 .distcp files.
Inspected as one checkpoint; converted to one file equal to torch's ``dcp_to_torch_save``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.formats.registry import open_checkpoint
from ckpttools.keypaths import iter_leaves

pytestmark = pytest.mark.dist
Layouts = Callable[[str], Path]


def test_every_model_tensor_is_in_two_chunks(layouts: Layouts) -> None:
    folder = layouts("dcp2")
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    with open_checkpoint(folder) as reader:
        # parameters are sharded on dim 0 (buffers are not)
        params = [e for e in reader.tensor_entries() if e.key.startswith("model.")
                  and e.key.endswith((".weight", ".bias")) and e.shape[0] > 1]
    assert len(params) == 8 and all("," in e.location for e in params)  # in both files


def test_inspect_shows_ranks_step_and_pieces(layouts: Layouts, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["inspect", str(layouts("dcp2")), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trainer = report["trainer"]
    assert (trainer["framework"], trainer["ranks"], trainer["step"]) == ("dcp", 2, 2)
    assert {p["name"]: p["kind"] for p in trainer["pieces"]} == {"model": "model",
                                                                 "optim": "optimizer"}
    assert report["default_state_dict"] == "model"


def test_convert_equals_dcp_to_torch_save(layouts: Layouts, runner: CliRunner,
                                          tmp_path: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = layouts("dcp2")
    dcp_to_torch_save(str(folder), str(tmp_path / "torch.pt"))
    reference = dict(iter_leaves(torch.load(tmp_path / "torch.pt", weights_only=False)))
    out = tmp_path / "one.pth"
    result = runner.invoke(cli, ["convert", str(folder), str(out)])
    assert result.exit_code == 0, result.output
    written = dict(iter_leaves(torch.load(out, weights_only=True)))
    tensors = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert len(tensors) >= 30
    for key, tensor in tensors.items():
        got = written[key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, key
        assert torch.equal(got.view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8)), key
    assert written["step"] == reference["step"] == 2
