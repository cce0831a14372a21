"""The lazy reader interface every on-disk format implements."""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from ckpttools.entries import Entry, GlobalRef, ObjectEntry, RawSource, TensorEntry

if TYPE_CHECKING:
    import torch


class Format(str, enum.Enum):
    """A checkpoint format. Values are the CLI spellings."""

    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    SAFETENSORS = "safetensors"
    SAFETENSORS_SHARDED = "safetensors-sharded"
    TORCH_SHARDED = "torch-sharded"
    DCP = "dcp"
    DEEPSPEED = "deepspeed-zero"
    FOLDER = "folder"


class CheckpointReader(ABC):
    """Lazy, read-only access to one checkpoint, in the manner of ``safetensors.safe_open``.

    ``entries()`` reads metadata only; ``load(key)`` materialises one tensor (by mmap where the
    format allows). Readers never execute pickled code unless opened with ``trust=True``.
    """

    format: ClassVar[Format]
    lazy: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        self.path = os.fspath(path)
        self.trust = trust

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def entries(self) -> tuple[Entry, ...]:
        """Every tensor and non-tensor leaf, flattened to dotted keys, in file order."""

    def tensor_entries(self) -> tuple[TensorEntry, ...]:
        """The tensor entries only."""
        return tuple(e for e in self.entries() if isinstance(e, TensorEntry))

    def object_entries(self) -> tuple[ObjectEntry, ...]:
        """The non-tensor entries only."""
        return tuple(e for e in self.entries() if isinstance(e, ObjectEntry))

    @abstractmethod
    def load(self, key: str) -> torch.Tensor:
        """Materialise the tensor stored under ``key`` on CPU.

        Raises:
            KeyError: no tensor has that key.
        """

    def tree(self) -> Any:
        """The nested structure: containers as saved, ``TensorRef`` for tensors,
        ``ObjectPlaceholder`` for objects the reader does not execute."""
        from ckpttools.entries import TensorRef

        # built once per reader: inspect and the state_dict search each ask for it
        if getattr(self, "_flat_tree", None) is None:
            self._flat_tree = {e.key: TensorRef(e.key) for e in self.tensor_entries()}
        return self._flat_tree

    def raw_source(self, key: str) -> RawSource | None:
        """The byte range holding ``key``'s data, when it is one contiguous range; else None."""
        return None

    def metadata(self) -> dict[str, str]:
        """Format-level string metadata (safetensors ``__metadata__``); empty by default."""
        return {}

    def manifest(self) -> str | None:
        """The manifest ckpttools stores beside the tensors of a checkpoint it converted (the
        non-tensor structure, see ``ckpttools.formats.manifest``), or None."""
        from ckpttools.formats.manifest import MANIFEST_KEY

        return self.metadata().get(MANIFEST_KEY)

    def _manifest_view(self, raw: tuple[Entry, ...]) -> tuple[Any, tuple[Entry, ...]] | None:
        """``(tree, entries)`` from the manifest, for readers of formats ckpttools writes;
        ``raw`` are the entries as stored. Computed once."""
        if not hasattr(self, "_manifest_cache"):
            text = self.manifest()
            view = None
            if text is not None:
                from ckpttools.formats.manifest_tree import manifest_view

                view = manifest_view(text, self.path,
                                     (e for e in raw if isinstance(e, TensorEntry)))
            self._manifest_cache = view
        return self._manifest_cache

    def pickle_globals(self) -> tuple[GlobalRef, ...]:
        """Every global the checkpoint's pickles reference; empty for pickle-free formats."""
        return ()

    def close(self) -> None:
        """Release file handles and maps."""
