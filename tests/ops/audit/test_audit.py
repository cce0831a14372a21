"""audit on real files: each check passing and failing, settings files, the manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttools.ops.audit.audit import AuditResult, audit_checkpoints
from ckpttools.ops.audit.config import AuditConfig, load_settings, parse_size
from tests._models import tiny_net

MODEL = str(Path(__file__).parents[2] / "_models.py") + ":TinyNet"


def _status(result: AuditResult, check: str, path: Path | None = None) -> str:
    rows = [c for c in result.checks if c.check == check and (path is None or c.path == str(path))]
    assert len(rows) == 1, result.to_dict()
    return rows[0].status


def _training_ckpt(path: Path, *, reorder: bool = False) -> Path:
    model = tiny_net()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    state = model.state_dict()
    if reorder:  # the model's modules were declared in another order since the optimizer saved
        keys = list(state)
        state = {k: state[k] for k in keys[4:] + keys[:4]}
    torch.save({"model": state, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                "epoch": 3, "rng_state": torch.get_rng_state()}, path)
    return path


def test_clean_training_checkpoint_passes_everything(tmp_path: Path) -> None:
    path = _training_ckpt(tmp_path / "ckpt.pth")
    config = AuditConfig(model=MODEL, require=("optimizer", "scheduler", "epoch", "rng", "model.head.bias"),
                         dtype="float32", max_size=parse_size("10MB"))
    result = audit_checkpoints(path, config)
    assert result.ok, result.to_dict()
    assert [c.check for c in result.checks] == ["integrity", "safety", "finite", "model",
                                                "completeness", "policy"]
    assert all(c.status == "PASS" for c in result.checks)


def test_reordered_parameters_fail_the_optimizer_check(tmp_path: Path) -> None:
    path = _training_ckpt(tmp_path / "ckpt.pth", reorder=True)
    result = audit_checkpoints(path, AuditConfig(require=("optimizer",)))
    row = next(c for c in result.checks if c.check == "completeness")
    assert row.status == "FAIL" and "wrong tensors" in row.reason and not result.ok


def test_missing_requirements_fail(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tiny_net().state_dict(), path)
    result = audit_checkpoints(path, AuditConfig(require=("optimizer", "epoch", "rng", "scheduler")))
    row = next(c for c in result.checks if c.check == "completeness")
    assert row.status == "FAIL" and len(row.details) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["torch-zip", "safetensors", "torch-legacy"])
def test_nonfinite_tensors_fail_or_warn(fmt: str, dtype: torch.dtype,
                                        make_checkpoint: Callable[..., Path]) -> None:
    bad = torch.ones(4, 4, dtype=dtype)
    bad[1, 2] = float("nan")
    bad[3, 3] = float("inf")
    path = make_checkpoint(fmt, {"ok": torch.zeros(3, dtype=dtype), "bad": bad})
    result = audit_checkpoints(path)
    row = next(c for c in result.checks if c.check == "finite")
    assert row.status == "FAIL" and row.details == ("bad: 1 NaN, 1 Inf of 16",)
    assert _status(audit_checkpoints(path, AuditConfig(allow_nonfinite=True)), "finite") == "WARN"


@pytest.mark.parametrize("damage", ["truncate-zip", "safetensors-offsets", "safetensors-name"])
def test_integrity_failures(damage: str, tmp_path: Path, make_checkpoint: Callable[..., Path]) -> None:
    state = {"w": torch.ones(64, 64), "b": torch.zeros(64)}
    if damage == "truncate-zip":
        path = make_checkpoint("torch-zip", state)
        path.write_bytes(path.read_bytes()[:9000])
    elif damage == "safetensors-offsets":
        path = make_checkpoint("safetensors", state)
        data = path.read_bytes()
        path.write_bytes(data.replace(b'"data_offsets":[0,256]', b'"data_offsets":[0,255]', 1)
                         if b'"data_offsets":[0,256]' in data else data[:-10])
    else:
        path = tmp_path / "model.safetensors"
        torch.save(state, path)
    result = audit_checkpoints(path)
    assert _status(result, "integrity") == "FAIL" and not result.ok
    assert _status(result, "finite") == "SKIP"


def test_model_check_fails_on_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"module." + k: v for k, v in tiny_net().state_dict().items()}, path)
    result = audit_checkpoints(path, AuditConfig(model=MODEL))
    assert _status(result, "model") == "FAIL"
    assert _status(audit_checkpoints(path, model=tiny_net(num_classes=10)), "model") == "FAIL"


def test_policy_dtype_and_size(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tiny_net().state_dict(), path)
    result = audit_checkpoints(path, AuditConfig(dtype="bfloat16", max_size=100))
    row = next(c for c in result.checks if c.check == "policy")
    assert row.status == "FAIL" and "max-size" in row.details[0]


def test_manifest_written_then_checked(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tiny_net().state_dict(), path)
    manifest = tmp_path / "sums.json"
    first = audit_checkpoints(path, AuditConfig(manifest=str(manifest)))
    assert first.ok and first.manifest_written == str(manifest)
    assert json.loads(manifest.read_text())["files"]
    assert _status(audit_checkpoints(path, AuditConfig(manifest=str(manifest))),
                   "reproducibility") == "PASS"
    torch.save(tiny_net(seed=1).state_dict(), path)
    assert _status(audit_checkpoints(path, AuditConfig(manifest=str(manifest))),
                   "reproducibility") == "FAIL"


@pytest.mark.parametrize("where", ["pyproject", "setup.cfg", "setup.cfg-tool"])
def test_settings_files(where: str, tmp_path: Path) -> None:
    if where == "pyproject":
        (tmp_path / "pyproject.toml").write_text(
            '[tool.ckpttools]\nrequire = ["optimizer"]\ndtype = "bf16"\nmax-size = "2GB"\n')
    else:
        section = "ckpttools" if where == "setup.cfg" else "tool:ckpttools"
        (tmp_path / "setup.cfg").write_text(
            f"[{section}]\nrequire = optimizer\ndtype = bf16\nmax-size = 2GB\n")
    config, source = load_settings(tmp_path)
    assert source is not None
    assert config == AuditConfig(require=("optimizer",), dtype="bfloat16", max_size=2 * 10**9)
    assert config.merged(require=("epoch",), dtype=None).require == ("optimizer", "epoch")


def test_unknown_setting_is_an_error(tmp_path: Path) -> None:
    from ckpttools.errors import SpecError

    (tmp_path / "pyproject.toml").write_text('[tool.ckpttools]\nmax_sise = "2GB"\n')
    with pytest.raises(SpecError, match="unknown setting .max-sise.; valid settings: allow-globals, allow-nonfinite, allow-unknown, dtype"):
        load_settings(tmp_path)


def test_folders_and_dcp_are_one_checkpoint_each(tmp_path: Path,
                                                 make_checkpoint: Callable[..., Any]) -> None:
    state = tiny_net().state_dict()
    make_checkpoint("dcp", state, "a")
    make_checkpoint("safetensors", state, "b")
    result = audit_checkpoints(tmp_path)
    assert len(result.files) == 2 and result.ok, result.to_dict()


def test_audit_of_pickle_free_files_does_not_need_unsafe_loads(
        tmp_path: Path, canary: Path) -> None:
    from tests.conftest import malicious_state

    path = tmp_path / "m.pth"
    torch.save(malicious_state(canary), path)
    result = audit_checkpoints(path, AuditConfig(require=("optimizer",), dtype="bfloat16"))
    assert _status(result, "safety") == "FAIL" and not canary.exists()
