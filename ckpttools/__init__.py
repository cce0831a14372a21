"""ckpttools: inspect, diff, diagnose, convert, verify and audit PyTorch checkpoints.

The public API mirrors the CLI: every operation is a plain function returning a frozen result
dataclass. Names are imported on first use so that ``import ckpttools`` stays cheap and never
imports torch.

Example:
    >>> import ckpttools
    >>> with ckpttools.open_checkpoint("model.pth") as ckpt:
    ...     summary = ckpttools.inspect_checkpoint(ckpt)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "convert_checkpoint": "ckpttools.ops.convert.conversion",
    "open_checkpoint": "ckpttools.formats.registry",
    "detect_format": "ckpttools.formats.registry",
    "Format": "ckpttools.formats.base",
    "CheckpointReader": "ckpttools.formats.base",
    "TensorEntry": "ckpttools.entries",
    "ObjectEntry": "ckpttools.entries",
    "GlobalRef": "ckpttools.entries",
    "CkptError": "ckpttools.errors",
    "inspect_checkpoint": "ckpttools.ops.inspect",
    "diagnose_text": "ckpttools.ops.diagnose.diagnosis",
    "diagnose_checkpoint": "ckpttools.ops.diagnose.diagnosis",
    "verify_resume": "ckpttools.api",
    "load_recipe": "ckpttools.ops.resume.recipe",
    "diff_against_model": "ckpttools.ops.model_diff",
    "diff_checkpoints": "ckpttools.ops.diff.pair",
    "remap_checkpoint": "ckpttools.ops.diff.remap",
    "build_model": "ckpttools.ops.model_spec",
    "find_state_dict": "ckpttools.ops.state_dict",
    "scan_checkpoint": "ckpttools.ops.audit.scan",
    "audit_checkpoints": "ckpttools.ops.audit.audit",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpttools' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
