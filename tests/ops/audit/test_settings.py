"""The one settings loader: pyproject.toml and setup.cfg spellings, errors that list the valid keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpttools.errors import SpecError
from ckpttools.ops.audit.config import AuditConfig, load_settings, setting_names

EXPECTED = AuditConfig(require=("optimizer", "epoch"), dtype="bfloat16", max_size=2 * 10**9,
                       allow_nonfinite=True)


@pytest.mark.parametrize("name, text", [
    ("pyproject.toml", '[tool.ckpttools]\nrequire = ["optimizer", "epoch"]\ndtype = "bf16"\n'
                       'max-size = "2GB"\nallow_nonfinite = true\n'),
    ("setup.cfg", "[ckpttools]  # or [tool:ckpttools]\nrequire = optimizer, epoch  # for resuming\n"
                  "dtype = bf16 ; release policy\nmax_size = 2GB\nallow-nonfinite = yes\n"),
    ("setup.cfg", "[metadata]\nname = x\n\n[tool:ckpttools]\nrequire = optimizer epoch\n"
                  "dtype = bf16\nmax-size = 2GB\nallow-nonfinite = true\n"),
], ids=["pyproject", "setup.cfg-inline-comments", "setup.cfg-tool"])
def test_every_spelling_reads_the_same(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    assert load_settings(tmp_path) == (EXPECTED, str(tmp_path / name))
    assert load_settings(tmp_path / name) == (EXPECTED, str(tmp_path / name))


def test_pyproject_wins_and_a_file_without_the_section_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "setup.cfg").write_text("[ckpttools]\ndtype = fp16\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert load_settings(tmp_path)[0].dtype == "float16"
    (tmp_path / "pyproject.toml").write_text("[tool.ckpttools]\ndtype = 'fp32'\n")
    assert load_settings(tmp_path)[0].dtype == "float32"


def test_no_settings_is_the_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path) == (AuditConfig(), None)


@pytest.mark.parametrize("text, message", [
    ("[tool.ckpttools]\nmax-sise = '2GB'\n",
     "pyproject.toml: max-sise: unknown setting 'max-sise'; valid settings: " + ", ".join(setting_names())),
    ("[tool.ckpttools]\ndtype = 'int3'\n", "pyproject.toml: dtype: 'int3' is not a floating dtype"),
    ("[tool.ckpttools]\nmax-size = 'big'\n", "pyproject.toml: max-size: 'big' is not a size"),
    ("[tool.ckpttools]\nallow-nonfinite = 'maybe'\n", "allow-nonfinite: 'maybe' is not true or false"),
    ("[tool.ckpttools\n", "pyproject.toml: cannot read"),
])
def test_bad_settings_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(SpecError) as info:
        load_settings(tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_valid_settings_are_spelled_with_dashes() -> None:
    assert "max-size" in setting_names() and "model-args" in setting_names()


def test_missing_path_and_file_without_section_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file or folder"):
        load_settings(tmp_path / "absent")
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = x\n")
    with pytest.raises(SpecError, match="no .tool.ckpttools., .ckpttools. or .tool:ckpttools. section"):
        load_settings(tmp_path / "setup.cfg")
