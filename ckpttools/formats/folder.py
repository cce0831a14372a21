"""Reader for a folder of several checkpoint files (stub, being written)."""

from __future__ import annotations

import os
from typing import Any

from ckpttools.errors import UnsupportedError
from ckpttools.formats.base import CheckpointReader, Format


def checkpoint_files(path: str) -> list[str]:
    return []


class FolderReader(CheckpointReader):
    format = Format.FOLDER

    def __init__(self, path: Any, *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        raise UnsupportedError(f"{self.path}: the {self.format.value} reader is not available yet")

    def entries(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def load(self, key: str) -> Any:
        raise NotImplementedError
