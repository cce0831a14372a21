"""ckpttools remap through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.cli.main import cli
from tests._models import TinyNet, tiny_net


def test_strip_prefix_writes_loadable_file(runner: CliRunner,
                                           make_checkpoint: Callable[..., Path],
                                           tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", nn.DataParallel(tiny_net()).state_dict())
    dst = tmp_path / "out.pth"
    r = runner.invoke(cli, ["remap", str(src), str(dst), "--strip-prefix", "module."])
    assert r.exit_code == 0, r.output
    assert "13 keys kept, 13 renamed, 0 dropped" in r.stdout
    TinyNet().load_state_dict(torch.load(dst, weights_only=True))


def test_dry_run_json(runner: CliRunner, make_checkpoint: Callable[..., Path],
                      tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", tiny_net().state_dict())
    dst = tmp_path / "out.safetensors"
    r = runner.invoke(cli, ["remap", str(src), str(dst), "--rename", r"^blocks\.=layers.",
                            "--drop", "head", "--dry-run", "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["written"] is False and data["changed"] == 4
    assert data["dropped"] == ["head.weight", "head.bias"]
    assert {"old": "blocks.0.0.weight", "new": "layers.0.0.weight"} in data["renamed"]
    assert not dst.exists()


def test_dry_run_table_folds_layers(runner: CliRunner,
                                    make_checkpoint: Callable[..., Path]) -> None:
    src = make_checkpoint("torch-zip", tiny_net(depth=4).state_dict())
    r = runner.invoke(cli, ["remap", str(src), "x.pth", "--rename", r"^blocks\.=layers.",
                            "--dry-run"])
    assert r.exit_code == 0
    assert "blocks.{0..3}.0.weight  layers.{0..3}.0.weight" in r.stdout


def test_errors_exit_2(runner: CliRunner, make_checkpoint: Callable[..., Path],
                       tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", tiny_net().state_dict())
    existing = tmp_path / "e.pth"
    existing.write_bytes(b"x")
    for args, fragment in [
        ([str(src), str(existing)], "--force"),
        ([str(src), str(src), "--force"], "destination is the source"),
        ([str(src), str(tmp_path / "o.pth"), "--rename", r"\.\d+\.0\.=."], "would both become"),
        ([str(src), str(tmp_path / "o.pth"), "--rename", "noequals"], "REGEX=REPLACEMENT"),
        ([str(src), str(tmp_path / "o.pth"), "--rules", str(tmp_path / "none.txt")],
         "cannot read"),
        ([str(src), str(tmp_path / "no" / "o.pth")], "does not exist"),
    ]:
        r = runner.invoke(cli, ["remap", *args])
        assert r.exit_code == 2, (args, r.output)
        assert fragment in r.stderr and r.stderr.count("\n") == 1
    assert existing.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "e.pth"]


def test_nested_to_safetensors_warns(runner: CliRunner, make_checkpoint: Callable[..., Path],
                                     tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", {"model": tiny_net().state_dict(), "epoch": 2})
    r = runner.invoke(cli, ["remap", str(src), str(tmp_path / "w.safetensors")])
    assert r.exit_code == 0
    assert "warning: model.pth: safetensors holds the state_dict alone" in r.stderr
    assert "state_dict under 'model'" in r.stdout
