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


@pytest.mark.parametrize("settings_file, text", [
    ("pyproject.toml", '[tool.ckpttools]\nrequire = ["optimizer"]\n'),
    ("setup.cfg", "[ckpttools]  # or [tool:ckpttools]\nrequire = optimizer  # resumable\n"),
])
def test_plugin_applies_the_settings_the_cli_applies(pytester: pytest.Pytester, settings_file: str,
                                                     text: str) -> None:
    from click.testing import CliRunner

    from ckpttools.cli.main import cli

    torch.save(tiny_net().state_dict(), pytester.path / "w.pth")
    torch.save({"model": tiny_net().state_dict(), "optimizer": {"state": {}, "param_groups": []}},
               pytester.path / "full.pth")
    (pytester.path / settings_file).write_text(text)
    for name, passes in (("w.pth", False), ("full.pth", True)):
        session = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--ckpttools-audit", name)
        session.assert_outcomes(passed=1) if passes else session.assert_outcomes(failed=1)
        if not passes:
            session.stdout.fnmatch_lines(["*completeness FAILED*optimizer*"])
        cli_run = CliRunner().invoke(cli, ["audit", name])  # pytester runs in its folder, as users do
        assert cli_run.exit_code == (0 if passes else 1), cli_run.stdout
        assert f"settings from {settings_file}" in cli_run.stderr


def test_plugin_reports_bad_settings(pytester: pytest.Pytester) -> None:
    torch.save(tiny_net().state_dict(), pytester.path / "w.pth")
    (pytester.path / "pyproject.toml").write_text("[tool.ckpttools]\nmax_sise = '2GB'\n")
    session = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--ckpttools-audit", "w.pth")
    session.assert_outcomes(failed=1)
    session.stdout.fnmatch_lines(["*unknown setting 'max-sise'; valid settings: *max-size*"])
