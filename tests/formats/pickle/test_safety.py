"""The allowlist: every entry is safe, has a reason, is documented; everything else fails closed."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ckpttools.formats.pickle.safety import (ALLOWED, classify_global, is_allowed_by_user,
                                             is_torch_default)
from ckpttools.ops.audit.opcodes import scan_opcodes

DOC = Path(__file__).resolve().parents[3] / "docs" / "safety.md"


@pytest.mark.parametrize("qualname", sorted(ALLOWED))
def test_every_allowed_global_is_safe_reasoned_and_documented(qualname: str) -> None:
    module, name = qualname.rsplit(".", 1)
    if "." in module and module.split(".")[-1][:1].isupper():  # Outer.Inner
        module, name = qualname.split(".", 1)[0], qualname.split(".", 1)[1]
    assert classify_global(module, name)[0] == "safe"
    assert ALLOWED[qualname].strip()
    assert f"`{qualname}`" in DOC.read_text()


def test_torch_weights_only_defaults_are_all_allowed() -> None:
    torch = pytest.importorskip("torch")
    from torch._weights_only_unpickler import _get_allowed_globals

    for qualname in _get_allowed_globals():
        module, name = qualname.rsplit(".", 1)
        assert classify_global(module, name)[0] == "safe", qualname
        assert is_torch_default(module, name), qualname
    assert torch is not None


@pytest.mark.parametrize("qualname", ["mypkg.Config", "transformers.TrainingArguments",
                                      "collections.UserDict", "enum.Enum", "pathlib.Path.open"])
def test_off_the_list_is_not_safe(qualname: str) -> None:
    module, name = qualname.rsplit(".", 1)
    assert classify_global(module, name)[0] != "safe"


def test_user_allow_matches_names_and_packages() -> None:
    assert is_allowed_by_user("mypkg.cfg.Config", {"mypkg.cfg.Config"})
    assert is_allowed_by_user("mypkg.cfg.Config", {"mypkg.*"})
    assert not is_allowed_by_user("mypkgx.Config", {"mypkg.*"})


def test_records_configs_pickle_are_safe() -> None:
    import argparse
    import datetime
    import pathlib

    import numpy as np

    value = [argparse.Namespace(a=1), pathlib.PurePosixPath("/x"), datetime.datetime(2020, 1, 1),
             datetime.timedelta(1), complex(1, 2), {1}, frozenset({2}), slice(1, 2),
             np.arange(3), np.float32(1), np.random.RandomState(0), np.random.default_rng(0)]
    for protocol in range(6):
        scan = scan_opcodes(pickle.dumps(value, protocol=protocol), "p")
        assert scan.safety == "safe", [g for g in scan.globals if g.safety != "safe"]
