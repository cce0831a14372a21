"""The per-tensor constructors built without the dataclasses' frozen ``__init__`` give the
very objects the dataclasses do (equal, same hash, same fields and ``__dict__``)."""

from __future__ import annotations

import dataclasses

from ckpttools.entries import TensorEntry, tensor_entry
from ckpttools.formats.pickle.placeholders import (StorageInfo, TensorPlaceholder,
                                                   new_placeholder, new_storage_info)


def test_new_placeholder_is_the_dataclass() -> None:
    made = new_placeholder("3", "bfloat16", 4, (2, 3), (3, 1), "cuda:0", True, "quantized")
    real = TensorPlaceholder("3", "bfloat16", 4, (2, 3), (3, 1), "cuda:0", True, "quantized")
    assert made == real and hash(made) == hash(real) and repr(made) == repr(real)
    assert dataclasses.astuple(made) == dataclasses.astuple(real)
    assert made.nbytes == real.nbytes == 12 and made.parameter is made.has_attributes is False


def test_new_storage_info_is_the_dataclass() -> None:
    made, real = new_storage_info("7", "int64", 5, "cpu"), StorageInfo("7", "int64", 5, "cpu")
    assert made == real and hash(made) == hash(real) and made.nbytes == 40


def test_tensor_entry_is_the_dataclass() -> None:
    made = tensor_entry("a.b", "float16", (4,), 8, "archive/data/0", "cuda:1")
    real = TensorEntry("a.b", "float16", (4,), 8, "archive/data/0", "cuda:1")
    assert made == real and hash(made) == hash(real) and repr(made) == repr(real)
    assert list(vars(made).items()) == list(vars(real).items())
    assert tensor_entry("k", "bool", (), 1) == TensorEntry("k", "bool", (), 1)
    assert dataclasses.replace(made, key="c") == dataclasses.replace(real, key="c")
