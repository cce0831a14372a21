"""Reader for the DCP format (stub, being written)."""

from __future__ import annotations

from typing import Any

from ckpttools.errors import UnsupportedError
from ckpttools.formats.base import CheckpointReader, Format


class DcpReader(CheckpointReader):
    format = Format.DCP

    def __init__(self, path: Any, *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        raise UnsupportedError(f"{self.path}: the {self.format.value} reader is not available yet")

    def entries(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def load(self, key: str) -> Any:
        raise NotImplementedError
