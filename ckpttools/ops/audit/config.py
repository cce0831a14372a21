"""Audit settings, set once in ``pyproject.toml`` (``[tool.ckpttools]``) or ``setup.cfg``
(``[ckpttools]`` or ``[tool:ckpttools]``) and overridden by command-line options.

Example ``pyproject.toml``::

    [tool.ckpttools]
    require = ["optimizer", "epoch"]
    dtype = "bf16"
    max-size = "2GB"
    model = "mypkg.models:Net"
    model-args = ["num_classes=10"]
    manifest = "checkpoints.sha256.json"
    allow-nonfinite = false
"""

from __future__ import annotations

import configparser
import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from typing import Any

from ckpttools.errors import SpecError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
                 "float": "float32", "fp64": "float64", "double": "float64",
                 "fp8": "float8_e4m3fn"}


@dataclass(frozen=True)
class AuditConfig:
    """Which checks the audit runs beyond integrity, safety and finiteness.

    Attributes:
        model: model spec or JSON signature file for the strict-load check.
        model_args: ``NAME=VALUE`` arguments for the model.
        key: dotted path of the model state_dict inside the checkpoint.
        require: ``optimizer``, ``scheduler``, ``epoch``, ``rng`` or any dotted key.
        dtype: floating dtype every model tensor must have (``bfloat16``).
        max_size: largest allowed checkpoint size in bytes.
        manifest: JSON file of sha256 per file: written when absent, checked when present.
        allow_nonfinite: report NaN/Inf as WARN rather than FAIL.
        allow_unknown: report globals not proven safe as WARN (true) or FAIL (default).
        allow_globals: globals treated as safe (``mypkg.Config`` or ``mypkg.*``); see
            docs/safety.md.
    """

    model: str | None = None
    model_args: tuple[str, ...] = ()
    key: str | None = None
    require: tuple[str, ...] = ()
    dtype: str | None = None
    max_size: int | None = None
    manifest: str | None = None
    allow_nonfinite: bool = False
    allow_unknown: bool = False
    allow_globals: tuple[str, ...] = ()

    def merged(self, **overrides: Any) -> AuditConfig:
        """This config with every override that is not None (or empty) applied."""
        given = {k: v for k, v in overrides.items() if v not in (None, (), [])}
        if "require" in given:
            given["require"] = tuple(dict.fromkeys((*self.require, *given["require"])))
        return replace(self, **{k: _coerce(k, v, "option") for k, v in given.items()})


def parse_size(text: str | int, where: str = "--max-size") -> int:
    """``"2GB"`` -> ``2000000000``; ``"1.5GiB"``; a bare number is bytes.

    Raises:
        SpecError: the text is not a size.
    """
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise SpecError(f"{where}: {text!r} is not a size; use e.g. 2GB, 500MiB or 1024")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _UNITS[unit])


def normalize_dtype(name: str) -> str:
    """``bf16`` -> ``bfloat16``; ``torch.float16`` -> ``float16``."""
    name = name.strip().lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(name, name)


def _coerce(name: str, value: Any, where: str) -> Any:
    names = {f.name for f in fields(AuditConfig)}
    if name not in names:
        raise SpecError(f"{where}: unknown ckpttools setting {name!r}; known: {', '.join(sorted(names))}")
    if name in ("require", "model_args", "allow_globals"):
        items = value if isinstance(value, (list, tuple)) else re.split(r"[,\s]+", str(value))
        return tuple(str(v) for v in items if str(v))
    if name == "max_size":
        return parse_size(value, f"{where}: max-size")
    if name == "dtype":
        return normalize_dtype(str(value))
    if name in ("allow_nonfinite", "allow_unknown"):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    return str(value)


def _from_mapping(data: dict[str, Any], where: str) -> AuditConfig:
    values = {k.replace("-", "_"): v for k, v in data.items()}
    return AuditConfig(**{k: _coerce(k, v, where) for k, v in values.items()})


def load_config(directory: str | os.PathLike[str] = ".") -> tuple[AuditConfig, str | None]:
    """Read the ckpttools section from ``pyproject.toml`` or ``setup.cfg`` in ``directory``.

    Returns:
        The config (defaults when no section exists) and the file it came from, if any.

    Raises:
        SpecError: the file cannot be parsed or a setting is unknown or malformed.
    """
    pyproject = os.path.join(directory, "pyproject.toml")
    if os.path.isfile(pyproject):
        try:
            with open(pyproject, "rb") as f:
                section = tomllib.load(f).get("tool", {}).get("ckpttools")
        except (tomllib.TOMLDecodeError, OSError) as e:
            raise SpecError(f"{pyproject}: cannot read ({e}); fix the file") from e
        if isinstance(section, dict):
            return _from_mapping(section, pyproject), pyproject
    setup_cfg = os.path.join(directory, "setup.cfg")
    if os.path.isfile(setup_cfg):
        parser = configparser.ConfigParser()
        try:
            parser.read(setup_cfg, encoding="utf-8")
        except (configparser.Error, OSError) as e:
            raise SpecError(f"{setup_cfg}: cannot read ({e}); fix the file") from e
        for name in ("ckpttools", "tool:ckpttools"):
            if parser.has_section(name):
                return _from_mapping(dict(parser.items(name)), setup_cfg), setup_cfg
    return AuditConfig(), None
