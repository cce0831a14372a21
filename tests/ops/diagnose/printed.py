"""Running what ``diagnose`` prints, for the tests that check a printed fix on a real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def run_fix(code: str, model: nn.Module, path: Path) -> nn.Module:
    """Run a printed fix as pasted: ``CKPT`` is the file, ``model`` the model it failed on."""
    scope: dict[str, Any] = {"model": model}
    exec(compile(code.replace("CKPT", str(path)), "<printed diagnose fix>", "exec"), scope)
    return scope["model"]


def labels(result: Any) -> list[tuple[str, float]]:
    """(label, confidence rounded to 0.01) of every cause of a diagnosis, in rank order."""
    return [(c.label, round(c.confidence, 2)) for c in result.causes]
