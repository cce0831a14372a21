"""The pytest plugin and ``ckpttools.testing.assert_checkpoint_ok``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.testing import assert_checkpoint_ok
from tests._models import tiny_net

pytest_plugins = ["pytester"]


def test_assert_checkpoint_ok_passes_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tiny_net().state_dict(), path)
    assert assert_checkpoint_ok(path, model=tiny_net(), dtype="fp32").ok
    with pytest.raises(AssertionError, match="completeness FAILED"):
        assert_checkpoint_ok(path, require=["optimizer"])


def test_plugin_fixture_and_option(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # the plugin comes from the installed pytest11 entry point, as it does for users
    path = tmp_path / "w.pth"
    torch.save(tiny_net().state_dict(), path)
    pytester.makepyfile(f"""
        def test_ckpt(assert_checkpoint_ok):
            assert_checkpoint_ok({str(path)!r})
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider",
                                          "--ckpttools-audit", str(bad))
    result.assert_outcomes(passed=1, failed=1)
