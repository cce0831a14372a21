"""``scan PATH...``: every global each pickle in a checkpoint would import, classified, without
executing anything; the verdict fails closed.

Every pickle is found from the bytes, not the name (``containers``): what torch.load would
unpickle on any of its paths and every other record or stream that parses as a pickle. A file
is ``safe`` only when every global is on the allowlist and everything was read; ``unsafe``
(runs code: a known gadget, a computed call, an ambiguous archive) and ``unknown`` (a global
not proven safe) exit 1; a file that cannot be read or parsed exits 2 (it cannot be judged).
"""

from __future__ import annotations

import glob
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ckpttools.errors import (CheckpointNotFoundError, CkptError, CorruptCheckpointError,
                              UnsupportedError)
from ckpttools.formats.pickle.safety import (add_safe_globals_line, is_allowed_by_user,
                                             is_torch_default)
from ckpttools.formats import fileio
from ckpttools.formats.sniff import (check_not_dcp_shard, check_readable, check_regular,
                                     special_file_kind)
from ckpttools.units import plural
from ckpttools.formats.trainer import is_trainer_folder

if TYPE_CHECKING:
    from ckpttools.ops.audit.containers import Found
    from ckpttools.ops.audit.opcodes import PickleScan

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".safetensors",
                       ".joblib", ".tar", ".pth.tar", ".model", ".dat", ".data", ".metadata",
                       ".npy", ".npz", ".gz", ".bz2", ".xz", ".lzma")
# the verdicts, worst first, and how the report names them
VERDICTS = {"unsafe": "DANGEROUS (runs code)", "error": "CANNOT JUDGE (unreadable)",
            "unknown": "NOT PROVEN SAFE", "safe": "safe"}


@dataclass(frozen=True)
class FileScan:
    """The scan of one file.

    Attributes:
        path: the file as given or found.
        kind: ``torch-zip``, ``torch-legacy``, ``torch-legacy-tar``, ``pickle``, ``safetensors``,
            ``npy``, ``gzip+pickle``, ...
        pickles: one report per pickle found (and per ambiguity of an archive).
        notes: what else was seen (trailing bytes after a pickle).
        error: why part or all of the file could not be read (empty when all was read).
    """

    path: str
    kind: str
    pickles: tuple[PickleScan, ...] = ()
    notes: tuple[str, ...] = ()
    error: str = ""

    @property
    def safety(self) -> str:
        """``unsafe`` > ``error`` (not all could be read) > ``unknown`` > ``safe``."""
        levels = {p.safety for p in self.pickles}
        if "unsafe" in levels:
            return "unsafe"
        if self.error:
            return "error"
        return "unknown" if "unknown" in levels else "safe"

    @property
    def unknown_globals(self) -> tuple[str, ...]:
        return tuple(sorted({g.qualname for p in self.pickles for g in p.globals
                             if g.safety == "unknown"}))

    @property
    def hint(self) -> str | None:
        """How to load or allow the file when its only obstacles are unknown globals."""
        if self.safety != "unknown" or not self.unknown_globals:
            return None
        # torch.load(weights_only=True) also needs the allowlisted records torch does not know
        names = sorted({g.qualname for p in self.pickles for g in p.globals
                        if not is_torch_default(g.module, g.name)})
        return add_safe_globals_line(names)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "safety": self.safety,
                "verdict": VERDICTS[self.safety], "error": self.error or None,
                "notes": list(self.notes), "weights_only_hint": self.hint,
                "pickles": [p.to_dict() for p in self.pickles]}


@dataclass(frozen=True)
class ScanResult:
    """The scan of every file given.

    ``ok`` is true only when every file is ``safe``.
    """

    files: tuple[FileScan, ...]

    @property
    def ok(self) -> bool:
        return all(f.safety == "safe" for f in self.files)

    @property
    def exit_code(self) -> int:
        """1 anything unsafe or not proven safe; 2 a file could not be judged; else 0."""
        if any(f.safety in ("unsafe", "unknown") for f in self.files):
            return 1
        return 2 if any(f.safety == "error" for f in self.files) else 0

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.safety == s for f in self.files)
                  for s in ("safe", "unknown", "unsafe", "error")}
        return {"ok": self.ok, "exit_code": self.exit_code, "counts": counts,
                "files": [f.to_dict() for f in self.files]}


# ---- paths ---------------------------------------------------------------------------------


def _is_checkpoint_file(path: str) -> bool:
    name = os.path.basename(path)
    if name.endswith(".distcp"):
        return False  # DCP data files: the folder's .metadata is scanned
    if name.endswith(CHECKPOINT_SUFFIXES) or special_file_kind(path):
        return True  # a FIFO among checkpoints is reported (and refused), never opened
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b"PK" or (head[:1] == b"\x80" and 0 < len(head) == 2 and head[1] <= 5)


def expand_paths(paths: Iterable[str | os.PathLike[str]], *,
                 folders_whole: bool = False) -> list[str]:
    """Files named, found under folders (recursively) or matched by globs, in a stable order.

    Args:
        paths: files, folders or glob patterns.
        folders_whole: keep folders that are one checkpoint (DCP, sharded) as one path.

    Raises:
        CheckpointNotFoundError: a path does not exist, a glob matches nothing, or a folder
            holds no checkpoint (a gate that passes on nothing would pass anything).
        UnsupportedError: a path is neither a file nor a folder (a FIFO, a device).
    """
    out: list[str] = []
    for raw in paths:
        path = os.fspath(raw)
        if path.endswith(".index.json") and not folders_whole:
            out.extend(_index_shards(path))
            continue
        if fileio.is_url(path):
            out.extend(_url_files(path, folders_whole))
            continue
        check_regular(path)  # a FIFO, socket or device would block: refused before anything opens it
        if os.path.isfile(path):
            check_not_dcp_shard(path)  # its folder is the checkpoint; the message names it
            out.append(path)
        elif os.path.isdir(path):
            found = _folder_files(path, folders_whole)
            if not found:
                raise CheckpointNotFoundError(f"{path}: no checkpoint files in this folder; pass a folder "
                                              "that holds .pt/.pth/.bin/.ckpt/.safetensors files")
            out.extend(found)
        elif os.path.exists(path):
            raise UnsupportedError(f"{path}: not a regular file or folder; save the checkpoint to a file")
        else:
            matches = sorted(glob.glob(path, recursive=True))
            if not matches or matches == [path]:  # a dangling link matches itself
                what = "no file matches this pattern" if glob.has_magic(path) else "no such file or directory"
                raise CheckpointNotFoundError(f"{path}: {what}; check the path")
            out.extend(expand_paths(matches, folders_whole=folders_whole))
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def _index_shards(index: str) -> list[str]:
    """The shard files a sharded set's index names: those are what a loader unpickles."""
    from ckpttools.formats.safetensors_sharded import read_index

    check_readable(index)
    folder = fileio.dirname(index)
    names = sorted(set(read_index(index)[0].values()))
    # a name reaching outside the index's folder is the reader's error to report, not a file to read
    return [fileio.join(folder, n) for n in names if not (os.path.isabs(n) or ".." in n.split("/"))]


def _url_files(url: str, folders_whole: bool) -> list[str]:
    """A URL names one file, or (s3://) a folder: a DCP folder is its ``.metadata``."""
    check_readable(url)  # 404, 401/403, timeout: the one-line error
    if not fileio.isdir(url):
        return [url]
    names = fileio.listdir(url)
    if folders_whole or ".metadata" not in names:
        return [url] if folders_whole else [fileio.join(url, n) for n in names
                                             if n.endswith(CHECKPOINT_SUFFIXES)]
    return [fileio.join(url, ".metadata")]


def _folder_files(folder: str, folders_whole: bool) -> list[str]:
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if folders_whole and (".metadata" in files or any(n.endswith(".index.json") for n in files)
                              or is_trainer_folder(root)):
            found.append(root)
            dirs.clear()
            continue
        found.extend(os.path.join(root, n) for n in sorted(files)
                     if _is_checkpoint_file(os.path.join(root, n)))
    return found


# ---- files -------------------------------------------------------------------------------


def _with_allow(scan: PickleScan, allow: frozenset[str]) -> PickleScan:
    """``unknown`` globals the user allowed (``--allow``, ``allow-globals``) count as safe."""
    if not allow or not any(g.safety == "unknown" for g in scan.globals):
        return scan
    refs = tuple(replace(g, safety="safe", reason="allowed by --allow / allow-globals")
                 if g.safety == "unknown" and is_allowed_by_user(g.qualname, allow) else g
                 for g in scan.globals)
    return replace(scan, globals=refs)


def _scan_safetensors(path: str, data: Any) -> FileScan | None:
    """A safetensors header validated as safetensors does; None when the bytes are not one
    (then they are scanned as a pickle: a pickle can start like a header)."""
    from ckpttools.formats import safetensors_file as sf

    try:
        n, header, size = sf.read_header(path)
        tensors = sf.parse_tensors(path, header, size - 8 - n)
        meta = header.get("__metadata__")
        if meta is not None and not (isinstance(meta, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
            raise CorruptCheckpointError(f"{path}: __metadata__ must map strings to strings")
    except CkptError as e:
        from ckpttools.ops.audit.containers import scan_blob

        found = scan_blob(data, "pickle")
        if found.pickles and found.pickles[0].opcodes > 1:
            return None
        return FileScan(path, "safetensors", error=str(e).removeprefix(f"{path}: "))
    return FileScan(path, "safetensors", notes=(f"header valid: {plural(len(tensors), 'tensor')}, "
                                                "no executable content",))


def scan_file(path: str, allow: frozenset[str] = frozenset()) -> FileScan:
    """Scan one file: every pickle any loader could unpickle from it, by content.

    Args:
        path: the file.
        allow: globals the user allows (exact names or ``pkg.*``); unknown ones only.

    Raises:
        CheckpointNotFoundError: the path does not exist.
    """
    special = special_file_kind(path)  # never open a FIFO, socket or device: it can block
    if special:
        return FileScan(path, "special", error=f"{special}, not a regular file; refused "
                                               "without opening it")
    label = os.path.basename(path)
    if fileio.is_url(path) and fileio.local_path(path) is None:
        return _scan_url(path, label, allow)
    path_or_cache = fileio.local_path(path) or path
    try:
        with open(path_or_cache, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return FileScan(path, "pickle", error="empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _scan_bytes(path, data, label, allow, os.path.dirname(path) or ".")
    except OSError as e:
        return FileScan(path, "pickle", error=f"cannot read: {e.strerror or e}")


def _scan_url(url: str, label: str, allow: frozenset[str]) -> FileScan:
    """``scan_file`` over a URL: the same checks on a lazy view, so only the blocks the scan
    touches (headers, pickles, the first bytes of each record) cross the network."""
    from ckpttools.formats import remote

    data = remote.RemoteBytes(url)
    if len(data) == 0:
        return FileScan(url, "pickle", error="empty file")
    return _scan_bytes(url, data, label, allow, fileio.dirname(url))


def _scan_bytes(path: str, data: Any, label: str, allow: frozenset[str], folder: str) -> FileScan:
    """The scan of a file's bytes (an mmap or a URL's lazy view): a safetensors header, or every
    pickle in the blob, and for a DCP ``.metadata`` every item of its ``folder``."""
    if len(data) >= 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") >= 2:
        result = _scan_safetensors(path, data)
        if result is not None:
            return result
    # the pickle machinery is imported when a file is not safetensors (a safetensors scan of
    # 20,000 tensors takes 80 ms; these imports took 10 more)
    from ckpttools.ops.audit.containers import scan_blob

    found = scan_blob(data, label)
    if label == ".metadata" and not any(p.safety == "unsafe" for p in found.pickles):
        _scan_dcp_items(folder, found)
    pickles = tuple(_with_allow(p, allow) for p in found.pickles)
    return FileScan(path, found.kind, pickles, tuple(found.notes), "; ".join(found.errors[:3]))


def _scan_dcp_items(folder: str, found: Found) -> None:
    """Every item of a DCP checkpoint: its loader ``torch.load``s each bytes item
    (``weights_only=False``), so each byte range is scanned as a blob of its own."""
    from ckpttools.formats.dcp_dir import DcpReader
    from ckpttools.ops.audit.containers import scan_blob

    try:
        reader = DcpReader(folder)
    except CkptError as e:
        found.errors.append(str(e))
        return
    unreadable: set[str] = set()  # said once: each item in it would fail alike (over a URL,
    with reader:                   # a request each: 12,000 items took minutes)
        for fqn, name, offset, length in reader.storage_ranges():
            if name in unreadable:
                continue
            special = special_file_kind(name)
            if special:
                unreadable.add(name)
                found.errors.append(f"{name}: {special}, not a regular file; refused")
                continue
            try:
                with fileio.open_binary(name) as f:
                    f.seek(offset)
                    blob = f.read(length)
            except OSError as e:
                unreadable.add(name)
                found.errors.append(f"{name}: cannot read ({e.strerror or e})")
                continue
            if len(blob) < length:
                found.errors.append(f"{name}: item {fqn} is cut short")
                continue
            item = scan_blob(blob, f"{os.path.basename(name)}@{offset} ({fqn})", 1)
            found.pickles += item.pickles
            found.errors += item.errors


def scan_checkpoint(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                    allow: Iterable[str] = ()) -> ScanResult:
    """Statically scan checkpoint files for code in their pickles; nothing is executed.

    Args:
        paths: a file, a folder (scanned recursively), a glob, or several of these.
        allow: globals to treat as safe (``mypkg.Config`` or ``mypkg.*``); lifts ``unknown``
            globals only, never a known code-execution gadget.

    Returns:
        One ``FileScan`` per file, each with every pickle's globals classified.

    Raises:
        CheckpointNotFoundError: a path does not exist.

    Example:
        >>> result = ckpttools.scan_checkpoint("model.pth")
        >>> result.ok, [g.qualname for f in result.files for p in f.pickles for g in p.globals]
        (True, ['collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch.FloatStorage'])
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    allowed = frozenset(allow)
    return ScanResult(tuple(scan_file(p, allowed) for p in expand_paths(paths)))
