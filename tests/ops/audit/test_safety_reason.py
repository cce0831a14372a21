"""``audit``'s safety PASS says what torch's own ``weights_only`` unpickler would do: a file
holding numpy arrays (allowlisted here, refused by torch by default) is not "only globals torch
weights_only allows"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckpttools.ops.audit.audit import audit_checkpoints  # noqa: E402


def _safety(path: Path) -> tuple[str, str]:
    check = next(c for c in audit_checkpoints([str(path)]).checks if c.check == "safety")
    return check.status, check.reason


def _torch_allows(path: Path) -> bool:
    try:
        torch.load(path, weights_only=True)
    except Exception:  # torch's UnpicklingError, whatever the version wraps it in
        return False
    return True


def test_numpy_arrays_are_named_as_needing_add_safe_globals(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2), "mean": np.arange(3, dtype=np.float32)}, path)
    status, reason = _safety(path)
    assert not _torch_allows(path)
    assert status == "PASS"
    assert "weights_only allows" not in reason
    assert "add_safe_globals" in reason and "numpy.ndarray" in reason


def test_plain_tensors_keep_the_claim_torch_confirms(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2), "step": 3}, path)
    status, reason = _safety(path)
    assert _torch_allows(path)
    assert (status, reason) == ("PASS", "1 pickle, only globals torch weights_only allows")


def test_dcp_claims_nothing_about_torch_load(tmp_path: Path) -> None:
    """DCP's reader unpickles ``.metadata`` itself (it names ``pathlib.PosixPath`` and DCP's
    own classes, which ``weights_only`` would refuse): no ``torch.load`` claim either way."""
    import warnings

    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": {"w": torch.ones(3)}, "step": 4},
                 storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    status, reason = _safety(folder)
    assert status == "PASS"
    assert reason.endswith("only allowlisted globals")
