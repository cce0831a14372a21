"""remap on real files: renames in order, drops, nested checkpoints, output formats, safety."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ckpttools.errors import CkptError, UnsafeCheckpointError
from ckpttools.ops.diff.remap import build_rules, plan_keys, remap_checkpoint
from tests._models import TinyNet, tiny_net


def test_plan_applies_strip_add_rename_in_order_and_drops_old_names() -> None:
    rules = build_rules(strip_prefix="module.", add_prefix="net.",
                        renames=[r"^net\.head\.=net.fc.", r"\.fc\.=.classifier."])
    pairs, dropped = plan_keys(["module.head.weight", "module.aux.w", "stem.w"], rules,
                               drops=[r"^module\.aux"])
    assert pairs == [("module.head.weight", "net.classifier.weight"), ("stem.w", "net.stem.w")]
    assert dropped == ["module.aux.w"]


def test_collision_names_both_keys() -> None:
    with pytest.raises(CkptError, match="'a.0.w' and 'a.1.w' would both become 'b.w'"):
        plan_keys(["a.0.w", "a.1.w"], build_rules(renames=[r"^a\.\d+\.=b."]))


def test_bad_drop_pattern() -> None:
    with pytest.raises(CkptError, match="--drop: bad regular expression"):
        plan_keys(["a"], [], drops=["("])


def test_nested_pth_keeps_the_rest(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    src = make_checkpoint("torch-zip", {"state_dict": {f"model.{k}": v for k, v in
                                                       model.state_dict().items()},
                                        "optimizer": opt.state_dict(), "epoch": 7})
    before = src.read_bytes()
    dst = tmp_path / "out.ckpt"
    alone = remap_checkpoint(str(src), str(tmp_path / "alone.ckpt"),
                             rules=build_rules(strip_prefix="model."))
    assert alone.notes and "alone" in alone.notes[0] and "--keep-wrapper" in alone.notes[0]
    TinyNet().load_state_dict(torch.load(tmp_path / "alone.ckpt", weights_only=True))
    result = remap_checkpoint(str(src), str(dst), rules=build_rules(strip_prefix="model."),
                              keep_wrapper=True)
    assert result.state_dict == "state_dict" and len(result.changed) == 13 and result.written
    assert not result.notes
    out = torch.load(dst, weights_only=True)
    assert out["epoch"] == 7 and out["optimizer"]["param_groups"][0]["lr"] == 0.5
    fresh = TinyNet()
    fresh.load_state_dict(out["state_dict"])
    assert torch.equal(fresh.head.weight, model.head.weight)
    assert src.read_bytes() == before


def test_safetensors_output_holds_the_state_dict(make_checkpoint: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    from safetensors.torch import load_file

    src = make_checkpoint("torch-zip", {"model": tiny_net().state_dict(), "epoch": 1})
    dst = tmp_path / "w.safetensors"
    result = remap_checkpoint(str(src), str(dst), drops=[r"^head\."])
    assert result.output_format == "safetensors" and result.notes
    assert result.dropped == ("head.weight", "head.bias")
    state = load_file(str(dst))
    assert "head.weight" not in state and len(state) == 11


def test_dry_run_writes_nothing(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", tiny_net().state_dict())
    dst = tmp_path / "never.pth"
    result = remap_checkpoint(str(src), str(dst), rules=build_rules(add_prefix="m."),
                              dry_run=True)
    assert not result.written and result.changed[0] == ("stem.weight", "m.stem.weight")
    assert not dst.exists()


def test_never_over_source_nor_existing_without_force(make_checkpoint: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", tiny_net().state_dict())
    with pytest.raises(CkptError, match="destination is the source"):
        remap_checkpoint(str(src), str(src), force=True)
    dst = tmp_path / "exists.pth"
    dst.write_bytes(b"keep")
    with pytest.raises(CkptError, match="--force"):
        remap_checkpoint(str(src), str(dst))
    assert dst.read_bytes() == b"keep"
    remap_checkpoint(str(src), str(dst), force=True)
    assert len(torch.load(dst, weights_only=True)) == 13


def test_collision_leaves_no_output(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", tiny_net().state_dict())
    dst = tmp_path / "out.pth"
    with pytest.raises(CkptError, match="would both become"):
        remap_checkpoint(str(src), str(dst), rules=build_rules(renames=[r"\.(weight|bias)$=.w"]))
    assert list(tmp_path.iterdir()) == [src.parent]


def test_objects_need_trust(make_checkpoint: Callable[..., Path], tmp_path: Path,
                            canary: Path) -> None:
    from tests.conftest import malicious_state

    src = make_checkpoint("torch-zip", {"model": tiny_net().state_dict(),
                                        "args": argparse.Namespace(lr=0.1),
                                        "evil": malicious_state(canary)})
    with pytest.raises(UnsafeCheckpointError, match="--trust"):
        remap_checkpoint(str(src), str(tmp_path / "o.pth"), keep_wrapper=True)
    assert not (tmp_path / "o.pth").exists()
    remap_checkpoint(str(src), str(tmp_path / "alone.pth"))  # the state_dict alone: no trust
    # the state_dict alone needs no trust
    remap_checkpoint(str(src), str(tmp_path / "o.safetensors"))


def test_objects_kept_with_trust(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = make_checkpoint("torch-zip", {"model": tiny_net().state_dict(),
                                        "args": argparse.Namespace(lr=0.1)})
    dst = tmp_path / "o.pth"
    remap_checkpoint(str(src), str(dst), rules=build_rules(add_prefix="net."), trust=True,
                     keep_wrapper=True)
    out = torch.load(dst, weights_only=False)
    assert out["args"].lr == 0.1 and "net.head.weight" in out["model"]
