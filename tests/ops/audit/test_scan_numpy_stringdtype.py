"""numpy 2's ``StringDType`` pickles through ``numpy._core._internal._convert_to_stringdtype_kwargs``
(``StringDType.__reduce__``), a two-line constructor of the dtype. It is off the allowlist, so a file
holding such an array is not proven safe (exit 1, the global named); it is no code-execution gadget,
so the scan must not say "runs code" of it. The rest of ``numpy._core._internal`` (its ctypes
helpers) stays a gadget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ckpttools.formats.pickle.safety import classify_global
from ckpttools.ops.audit.scan import scan_checkpoint

GLOBAL = "numpy._core._internal._convert_to_stringdtype_kwargs"

def _string_array_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "strings.pt"
    torch.save({"w": torch.ones(2), "labels": np.array(["a", "bb"], dtype=np.dtypes.StringDType())}, path)
    return path


def test_string_dtype_array_is_not_proven_safe_and_does_not_run_code(tmp_path: Path) -> None:
    path = _string_array_checkpoint(tmp_path)
    assert GLOBAL in path.read_bytes().decode("latin1").replace("\n", ".")  # what numpy really wrote
    result = scan_checkpoint(path)
    (f,) = result.files
    assert result.exit_code == 1 and f.safety == "unknown"
    assert f.unknown_globals == (GLOBAL,)


def test_only_the_constructor_leaves_the_gadget_prefix() -> None:
    assert classify_global("numpy._core._internal", "_convert_to_stringdtype_kwargs")[0] == "unknown"
    assert classify_global("numpy.core._internal", "_convert_to_stringdtype_kwargs")[0] == "unknown"


@pytest.mark.parametrize("name", ["_ctypes", "_getintp_ctype", "npy_ctypes_check", "ctypes"])
def test_the_ctypes_helpers_of_the_module_stay_gadgets(name: str) -> None:
    assert classify_global("numpy._core._internal", name)[0] == "unsafe"
