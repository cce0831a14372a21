"""The pickle ``torch.save`` writes, for the tests that walk it byte by byte."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import torch


def data_pkl(state: Any) -> bytes:
    """The ``data.pkl`` record of ``torch.save(state)``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(buf) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
