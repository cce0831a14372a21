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
from ckpttools.ops.audit.config import AuditConfig, load_settings


def assert_checkpoint_ok(path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                         model: Any = None, model_args: Iterable[str] = (), key: str | None = None,
                         require: Iterable[str] = (), dtype: str | None = None,
                         max_size: str | int | None = None, manifest: str | None = None,
                         allow_nonfinite: bool | None = None, allow_unknown: bool | None = None,
                         settings: str | os.PathLike[str] | None = None) -> AuditResult:
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
        allow_unknown: third-party classes in the pickle only warn (the default).
        settings: read ``[tool.ckpttools]`` settings first from this folder or file, as
            ``ckpttools audit --config`` does; the arguments above override them.

    Returns:
        The audit result (all checks passed or warned).

    Raises:
        AssertionError: a check failed; the message has one line per failure.
    """
    base, source = load_settings(settings) if settings is not None else (AuditConfig(), None)
    spec = model if isinstance(model, str) else None
    config = base.merged(model=spec, model_args=tuple(model_args), key=key, require=tuple(require),
                         dtype=dtype, max_size=max_size, manifest=manifest,
                         allow_nonfinite=allow_nonfinite, allow_unknown=allow_unknown)
    result = audit_checkpoints(path, config, model=None if spec else model, config_file=source)
    return check_audit(result)


def check_audit(result: AuditResult) -> AuditResult:
    """Raise ``AssertionError`` with one line per failed check of ``result``; else return it."""
    if not result.ok:
        lines = [f"{c.path}: {c.check} FAILED: {c.reason}" for c in result.checks
                 if c.status == "FAIL"]
        raise AssertionError("checkpoint audit failed:\n" + "\n".join(lines))
    return result
