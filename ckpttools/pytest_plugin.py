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
                         "a failed check fails the session.")


@pytest.fixture
def assert_checkpoint_ok() -> Callable[..., Any]:
    """``ckpttools.testing.assert_checkpoint_ok``: audit a checkpoint, fail on any FAIL."""
    from ckpttools.testing import assert_checkpoint_ok as helper

    return helper


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    paths = config.getoption("ckpttools_audit")
    if paths:
        items.insert(0, _AuditItem.from_parent(session, name="ckpttools-audit", paths=paths))


class _AuditItem(pytest.Item):
    def __init__(self, *, paths: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths = paths

    def runtest(self) -> None:
        from ckpttools.testing import assert_checkpoint_ok

        assert_checkpoint_ok(self.paths)

    def reportinfo(self) -> tuple[str, int, str]:
        return "ckpttools-audit", 0, f"ckpttools audit {' '.join(self.paths)}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        return str(excinfo.value)


