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

import os
import re
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
        return replace(self, **{k: _coerce(k, v, "--" + k.replace("_", "-")) for k, v in given.items()})


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


FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64", "float8_e4m3fn", "float8_e5m2",
                "float8_e4m3fnuz", "float8_e5m2fnuz")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def normalize_dtype(name: str, where: str = "--dtype") -> str:
    """``bf16`` -> ``bfloat16``; ``torch.float16`` -> ``float16``.

    Raises:
        SpecError: the name is not a floating dtype (the policy check is about floating tensors).
    """
    canonical = name.strip().lower().removeprefix("torch.")
    canonical = DTYPE_ALIASES.get(canonical, canonical)
    if canonical not in FLOAT_DTYPES:
        raise SpecError(f"{where}: {name!r} is not a floating dtype; use bf16, fp16, fp32, fp64 "
                        "or a torch name such as float8_e4m3fn")
    return canonical


def setting_names() -> tuple[str, ...]:
    """The settings a ckpttools section may hold, spelled as in the documentation (dashes)."""
    return tuple(sorted(f.name.replace("_", "-") for f in fields(AuditConfig)))


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise SpecError(f"{where}: {value!r} is not true or false; write true or false")


def _coerce(name: str, value: Any, where: str) -> Any:
    if name not in {f.name for f in fields(AuditConfig)}:
        raise SpecError(f"{where}: unknown setting {name.replace('_', '-')!r}; valid settings: "
                        f"{', '.join(setting_names())}")
    if name in ("require", "model_args", "allow_globals"):
        items = value if isinstance(value, (list, tuple)) else re.split(r"[,\s]+", str(value))
        return tuple(str(v) for v in items if str(v))
    if name == "max_size":
        return parse_size(value, where)
    if name == "dtype":
        return normalize_dtype(str(value), where)
    if name in ("allow_nonfinite", "allow_unknown"):
        return _flag(value, where)
    return str(value)


def _from_mapping(data: dict[str, Any], where: str) -> AuditConfig:
    values = {str(k).strip().replace("-", "_"): v for k, v in data.items()}
    return AuditConfig(**{k: _coerce(k, v, f"{where}: {k.replace('_', '-')}")
                          for k, v in values.items()})


SETUP_CFG_SECTIONS = ("ckpttools", "tool:ckpttools")


def _read_pyproject(path: str) -> dict[str, Any] | None:
    import tomllib  # the parsers are imported when a settings file is there to read

    try:
        with open(path, "rb") as f:
            section = tomllib.load(f).get("tool", {}).get("ckpttools")
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise SpecError(f"{path}: cannot read ({e}); fix the file") from e
    if section is not None and not isinstance(section, dict):
        raise SpecError(f"{path}: [tool.ckpttools] must be a table; write it as a [tool.ckpttools] section")
    return section


def _read_setup_cfg(path: str) -> dict[str, Any] | None:
    import configparser

    # inline comments, as in "[ckpttools]  # or [tool:ckpttools]" or "dtype = bf16  ; release policy"
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read ({' '.join(str(e).split())}); fix the file") from e
    for name in SETUP_CFG_SECTIONS:
        if parser.has_section(name):
            return dict(parser.items(name))
    return None


def _read_file(path: str) -> dict[str, Any] | None:
    return _read_pyproject(path) if path.endswith(".toml") else _read_setup_cfg(path)


def load_settings(path: str | os.PathLike[str] | None = None) -> tuple[AuditConfig, str | None]:
    """The one settings loader, for the CLI and the pytest plugin alike.

    Args:
        path: ``None`` for the working folder; a folder (its ``pyproject.toml``
            ``[tool.ckpttools]`` wins over its ``setup.cfg`` ``[ckpttools]`` or
            ``[tool:ckpttools]``); or one such file, which must then hold the section.

    Returns:
        The settings (defaults when no section exists) and the file they came from, if any.

    Raises:
        SpecError: the path is missing, a file cannot be parsed, or a setting is unknown or
            malformed (the message lists the valid settings).
    """
    target = os.fspath(path) if path is not None else "."
    if not os.path.exists(target):
        raise SpecError(f"{target}: no such file or folder; pass --config a pyproject.toml, "
                        "a setup.cfg or a folder holding one")
    if os.path.isdir(target):
        for name in ("pyproject.toml", "setup.cfg"):
            candidate = os.path.join(target, name)
            section = _read_file(candidate) if os.path.isfile(candidate) else None
            if section is not None:
                return _from_mapping(section, candidate), candidate
        return AuditConfig(), None
    section = _read_file(target)
    if section is None:
        raise SpecError(f"{target}: no [tool.ckpttools], [ckpttools] or [tool:ckpttools] section; "
                        "add one or pass the folder")
    return _from_mapping(section, target), target
