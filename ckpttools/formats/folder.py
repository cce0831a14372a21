"""Reader for a folder of several checkpoint files, such as accelerate's ``save_state`` output
(``model.safetensors``, ``optimizer.bin``, ``scheduler.bin``, ``random_states_0.pkl``,
``scaler.pt``, ``custom_checkpoint_0.pkl``).

Keys are ``<file name>.<key inside the file>`` (``optimizer.bin.state.0.exp_avg``): the folder
reads as one dict keyed by file name, so dotted ``--key`` paths work unchanged
(``--key optimizer.bin`` picks the optimizer's state). A file holding a single tensor has the
file name as its key.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from ckpttools.entries import Entry, GlobalRef, ObjectPlaceholder, RawSource, TensorEntry, TensorRef
from ckpttools.errors import UnknownFormatError
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.single_file import FILE_FORMATS, open_file

if TYPE_CHECKING:
    import torch

EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".pkl")


def checkpoint_files(path: str) -> list[str]:
    """The checkpoint files directly in folder ``path``, sorted by name.

    A file counts when its name ends in one of ``EXTENSIONS`` (which covers accelerate's file
    names) and its bytes sniff as a single-file checkpoint format; empty or unreadable files
    are skipped.
    """
    out = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not name.endswith(EXTENSIONS) or not os.path.isfile(full):
            continue
        try:
            if any(spec.sniff(full) for spec in FILE_FORMATS.values()):
                out.append(name)
        except OSError:
            continue
    return out


def join_key(name: str, inner: str) -> str:
    """The folder key of ``inner`` inside file ``name``."""
    return f"{name}.{inner}" if inner else name


def _prefix_refs(node: Any, name: str) -> Any:
    """A copy of a member's tree whose ``TensorRef`` keys are folder keys."""
    if isinstance(node, TensorRef):
        return TensorRef(join_key(name, node.key))
    if isinstance(node, dict):
        return {k: _prefix_refs(v, name) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        out = [_prefix_refs(v, name) for v in node]
        return tuple(out) if isinstance(node, tuple) else out
    if isinstance(node, ObjectPlaceholder):
        return dataclasses.replace(
            node, args=_prefix_refs(node.args, name), state=_prefix_refs(node.state, name),
            items=_prefix_refs(node.items, name))
    return node


class FolderReader(CheckpointReader):
    """Reads every checkpoint file of a folder as one checkpoint keyed by file name."""

    format = Format.FOLDER

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        self._files = checkpoint_files(self.path) if os.path.isdir(self.path) else []
        if not self._files:
            raise UnknownFormatError(f"{self.path}: a directory with no checkpoint in it "
                                     f"(looked for {', '.join('*' + e for e in EXTENSIONS)})")
        self._open: dict[str, CheckpointReader] = {}
        self._entries: tuple[Entry, ...] | None = None

    def files(self) -> tuple[str, ...]:
        """The member file names, sorted."""
        return tuple(self._files)

    def member(self, name: str) -> CheckpointReader:
        """The open reader of member file ``name``."""
        if name not in self._open:
            self._open[name] = open_file(os.path.join(self.path, name), trust=self.trust)
        return self._open[name]

    def split_key(self, key: str) -> tuple[str, str]:
        """``(file name, key inside)`` of a folder key; the longest matching file name wins.

        Raises:
            KeyError: no member file starts the key.
        """
        for name in sorted(self._files, key=len, reverse=True):
            if key == name:
                return name, ""
            if key.startswith(name + "."):
                return name, key[len(name) + 1:]
        raise KeyError(key)

    def entries(self) -> tuple[Entry, ...]:
        if self._entries is None:
            out: list[Entry] = []
            for name in self._files:
                for e in self.member(name).entries():
                    out.append(self._wrap(name, e))
            self._entries = tuple(out)
        return self._entries

    @staticmethod
    def _wrap(name: str, e: Entry) -> Entry:
        if isinstance(e, TensorEntry):
            where = name if e.location in ("", name) else f"{name}/{e.location}"
            return dataclasses.replace(e, key=join_key(name, e.key), location=where)
        return dataclasses.replace(e, key=join_key(name, e.key))

    def tree(self) -> Any:
        return {name: _prefix_refs(self.member(name).tree(), name) for name in self._files}

    def load(self, key: str) -> torch.Tensor:
        name, inner = self.split_key(key)
        return self.member(name).load(inner)

    def raw_source(self, key: str) -> RawSource | None:
        name, inner = self.split_key(key)
        return self.member(name).raw_source(inner)

    def metadata(self) -> dict[str, str]:
        """Each member's metadata, keys prefixed with the file name."""
        return {join_key(name, k): v for name in self._files
                for k, v in self.member(name).metadata().items()}

    def pickle_globals(self) -> tuple[GlobalRef, ...]:
        return tuple(dataclasses.replace(g, pickle=f"{name}/{g.pickle}" if g.pickle else name)
                     for name in self._files for g in self.member(name).pickle_globals())

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()
