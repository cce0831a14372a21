"""Helpers for a project's own tests: assert that a checkpoint passes the audit.

Example::

    from ckpttools.testing import assert_checkpoint_ok

    def test_release_checkpoint():
        assert_checkpoint_ok("release/model.safetensors", model="mypkg.models:Net",
                             require=["epoch"], dtype="bf16")
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ckpttools.ops.audit.audit import AuditResult, audit_checkpoints
from ckpttools.ops.audit.config import AuditConfig, normalize_dtype, parse_size


def assert_checkpoint_ok(path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                         model: Any = None, model_args: Iterable[str] = (), key: str | None = None,
                         require: Iterable[str] = (), dtype: str | None = None,
                         max_size: str | int | None = None, manifest: str | None = None,
                         allow_nonfinite: bool = False, allow_unknown: bool = True) -> AuditResult:
    """Audit ``path`` and raise ``AssertionError`` listing every failed check.

    Args:
        path: a checkpoint file or folder, a glob, or several.
        model: a model spec (``"mypkg.models:Net"``, a JSON signature file), an ``nn.Module``
            or a ``ModelSignature``: the checkpoint must load into it with ``strict=True``.
        model_args: ``NAME=VALUE`` arguments for a model spec.
        key: dotted path of the model state_dict inside the checkpoint.
        require: ``optimizer``, ``scheduler``, ``epoch``, ``rng`` or dotted keys.
        dtype: the dtype every floating model tensor must have (``bf16``).
        max_size: largest allowed size (``"2GB"`` or bytes).
        manifest: sha256 manifest to check (written when absent).
        allow_nonfinite: NaN/Inf only warns.
        allow_unknown: third-party classes in the pickle only warn.

    Returns:
        The audit result (all checks passed or warned).

    Raises:
        AssertionError: a check failed; the message has one line per failure.
    """
    spec = model if isinstance(model, str) else None
    config = AuditConfig(model=spec, model_args=tuple(model_args), key=key,
                         require=tuple(require), dtype=normalize_dtype(dtype) if dtype else None,
                         max_size=parse_size(max_size) if max_size is not None else None,
                         manifest=manifest, allow_nonfinite=allow_nonfinite,
                         allow_unknown=allow_unknown)
    result = audit_checkpoints(path, config, model=None if spec else model)
    if not result.ok:
        lines = [f"{c.path}: {c.check} FAILED: {c.reason}" for c in result.checks
                 if c.status == "FAIL"]
        raise AssertionError("checkpoint audit failed:\n" + "\n".join(lines))
    return result
