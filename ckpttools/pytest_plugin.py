"""pytest plugin (entry point ``pytest11``): the ``assert_checkpoint_ok`` fixture and a
``--ckpttools-audit PATH`` option that audits checkpoints as part of the test session.

Example test::

    def test_checkpoint(assert_checkpoint_ok):
        assert_checkpoint_ok("model.pth", model="mypkg.models:Net", require=["optimizer"])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ckpttools")
    group.addoption("--ckpttools-audit", action="append", default=[], metavar="PATH",
                    help="Audit these checkpoints (files, folders, globs) before the tests run; "
                         "a failed check fails the session. Settings come from [tool.ckpttools] "
                         "as for 'ckpttools audit'.")
    group.addoption("--ckpttools-config", default=None, metavar="PATH",
                    help="Where the audit settings are read (as 'ckpttools audit --config'; "
                         "default: the folder pytest was started from).")


@pytest.fixture
def assert_checkpoint_ok() -> Callable[..., Any]:
    """``ckpttools.testing.assert_checkpoint_ok``: audit a checkpoint, fail on any FAIL."""
    from ckpttools.testing import assert_checkpoint_ok as helper

    return helper


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    paths = config.getoption("ckpttools_audit")
    if paths:
        settings = config.getoption("ckpttools_config") or str(config.invocation_params.dir)
        items.insert(0, _AuditItem.from_parent(session, name="ckpttools-audit", paths=paths,
                                               settings=settings))


class _AuditItem(pytest.Item):
    """The audit as one test; it reads settings with the loader ``ckpttools audit`` uses."""

    def __init__(self, *, paths: list[str], settings: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths = paths
        self.settings = settings

    def runtest(self) -> None:
        from ckpttools.ops.audit.audit import audit_checkpoints
        from ckpttools.ops.audit.config import load_settings
        from ckpttools.testing import check_audit

        config, source = load_settings(self.settings)
        check_audit(audit_checkpoints(self.paths, config, config_file=source))

    def reportinfo(self) -> tuple[str, int, str]:
        return "ckpttools-audit", 0, f"ckpttools audit {' '.join(self.paths)}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        return str(excinfo.value)


