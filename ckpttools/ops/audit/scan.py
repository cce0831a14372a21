"""``scan PATH...``: list every global each pickle in a checkpoint would import, classified,
without executing anything.

Every pickle is found from the bytes, not the name: every ``.pkl`` record of a torch zip and any
other record that parses as a pickle (a renamed ``data.pkl``), the five pickles of a legacy
file, each pickle of a bare pickle file back to back, a DCP ``.metadata``. A zip whose central
directory is broken is read by its local headers, as a lenient loader would
(mmaitre314/picklescan GHSA-w8jq-xcqf-f792). Safetensors headers are validated: they are JSON
and cannot carry code.
"""

from __future__ import annotations

import glob
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from ckpttools.errors import CheckpointNotFoundError, CkptError, CorruptCheckpointError
from ckpttools.formats import zip_records as zr
from ckpttools.formats.trainer import is_trainer_folder
from ckpttools.ops.audit.opcodes import PickleScan, scan_opcodes

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
LEGACY_PICKLES = ("magic number", "protocol version", "sys_info", "data", "storage keys")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".safetensors",
                       ".joblib", ".tar", ".pth.tar", ".model", ".dat", ".data", ".metadata")
MAX_SIDE_RECORD = 64 << 20  # non-.pkl zip records larger than this are tensor data
MAX_PICKLES = 10_000


@dataclass(frozen=True)
class FileScan:
    """The scan of one file.

    Attributes:
        path: the file as given or found.
        kind: ``torch-zip``, ``torch-legacy``, ``pickle``, ``safetensors``.
        pickles: one report per pickle found.
        notes: what else was seen (trailing bytes, records that failed their CRC).
        error: why part or all of the file could not be read (empty when all was read).
    """

    path: str
    kind: str
    pickles: tuple[PickleScan, ...] = ()
    notes: tuple[str, ...] = ()
    error: str = ""

    @property
    def readable(self) -> bool:
        """Whether anything at all could be read."""
        return any(p.opcodes for p in self.pickles) or (self.kind == "safetensors"
                                                        and not self.error)

    @property
    def safety(self) -> str:
        """``unsafe`` > ``error`` (nothing read) > ``unknown`` > ``safe``."""
        levels = {p.safety for p in self.pickles}
        if "unsafe" in levels:
            return "unsafe"
        if self.error and not self.readable:
            return "error"
        return "unknown" if "unknown" in levels else "safe"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "safety": self.safety,
                "error": self.error or None, "notes": list(self.notes),
                "pickles": [p.to_dict() for p in self.pickles]}


@dataclass(frozen=True)
class ScanResult:
    """The scan of every file given.

    ``ok`` is false when any pickle references an unsafe global or construct.
    """

    files: tuple[FileScan, ...]

    @property
    def ok(self) -> bool:
        return not any(f.safety == "unsafe" for f in self.files)

    @property
    def exit_code(self) -> int:
        """1 anything unsafe (even in a malformed file); 2 a file could not be read; else 0."""
        if not self.ok:
            return 1
        return 2 if any(f.safety == "error" for f in self.files) else 0

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.safety == s for f in self.files)
                  for s in ("safe", "unknown", "unsafe", "error")}
        return {"ok": self.ok, "counts": counts, "files": [f.to_dict() for f in self.files]}


# ---- paths ---------------------------------------------------------------------------------


def _is_checkpoint_file(path: str) -> bool:
    name = os.path.basename(path)
    if name.endswith(".distcp"):
        return False  # DCP data files hold raw tensor bytes; the folder's .metadata is scanned
    if name.endswith(CHECKPOINT_SUFFIXES):
        return True
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
        CheckpointNotFoundError: a path does not exist and matches nothing as a glob.
    """
    out: list[str] = []
    for raw in paths:
        path = os.fspath(raw)
        if os.path.isfile(path):
            out.append(path)
        elif os.path.isdir(path):
            out.extend(_folder_files(path, folders_whole))
        else:
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise CheckpointNotFoundError(f"{path}: no such file or directory")
            out.extend(expand_paths(matches, folders_whole=folders_whole))
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


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


# ---- containers ----------------------------------------------------------------------------


def _scan_pickles_back_to_back(f: IO[bytes], size: int, label: str,
                               names: tuple[str, ...] = ()) -> tuple[list[PickleScan], list[str]]:
    """Walk pickles one after another from offset 0; ``names`` caps and labels them."""
    pickles: list[PickleScan] = []
    notes: list[str] = []
    pos = 0
    while pos < size and len(pickles) < (len(names) or MAX_PICKLES):
        i = len(pickles)
        name = f"{label} ({names[i]})" if names else (label if i == 0 else f"{label} #{i + 1}")
        scan = scan_opcodes(f, name, pos)
        if i and not names and scan.error and not scan.globals and scan.opcodes <= 1:
            notes.append(f"{size - pos} bytes after pickle {i} are not a pickle")
            break
        pickles.append(scan)
        if scan.error:
            break
        pos = scan.end
    return pickles, notes


def _record_bytes(path: str, f: IO[bytes], rec: zr.ZipRecord) -> tuple[bytes, str]:
    """A record's bytes even when its CRC fails (the loader may not check), with a note."""
    if rec.method != zipfile.ZIP_STORED:
        return zr.read_record(path, f, rec), ""
    f.seek(zr.data_offset(f, rec))
    data = f.read(rec.file_size)
    if len(data) < rec.file_size:
        return data, f"record {rec.name} is cut short"
    return data, "" if zlib.crc32(data) == rec.crc else f"record {rec.name} fails its CRC check"


def _next_header(f: IO[bytes], start: int, size: int) -> int:
    """Offset of the next local header or central directory after ``start`` (or ``size``)."""
    pos = start
    while pos < size:
        f.seek(pos)
        block = f.read(1 << 20)
        hits = [i for i in (block.find(b"PK\x03\x04"), block.find(b"PK\x01\x02")) if i >= 0]
        if hits:
            return pos + min(hits)
        pos += max(1, len(block) - 3)
    return size


def _local_records(f: IO[bytes], size: int) -> dict[str, zr.ZipRecord]:
    """Records found by walking local headers from the start, for a broken central directory.
    Sizes written only in a trailing data descriptor (torch's writer does this) are found by
    looking for the next header."""
    records: dict[str, zr.ZipRecord] = {}
    pos = 0
    while pos + 30 <= size:
        f.seek(pos)
        head = f.read(30)
        if head[:4] != b"PK\x03\x04":
            break
        _, _, flags, method, _, _, crc, csize, usize, nlen, elen = struct.unpack("<4s5H3L2H", head)
        name = f.read(nlen).decode("utf-8", "replace")
        start = pos + 30 + nlen + elen
        if csize == 0 and flags & 0x08 and method == zipfile.ZIP_STORED:
            end = _next_header(f, start, size)
            csize = usize = max(0, end - start - 16)  # minus the 16-byte data descriptor
            crc = zlib.crc32(f.read(0))  # unknown: the CRC note flags it
        records[name] = zr.ZipRecord(name, pos, csize, usize, crc, method)
        pos = start + csize + (16 if flags & 0x08 else 0)
    return records


def _is_storage(name: str) -> bool:
    return "/data/" in f"/{name}" and not name.endswith(".pkl")


def _scan_zip(path: str, f: IO[bytes], size: int) -> FileScan:
    notes: list[str] = []
    error = ""
    try:
        records = zr.read_directory(f, size)
    except (zr.ZipError, struct.error, UnicodeDecodeError) as e:
        records = _local_records(f, size)
        notes.append(f"central directory unreadable ({e}); read {len(records)} local headers")
        if not records:
            error = f"not a readable zip archive ({e})"
    pickles: list[PickleScan] = []
    for rec in sorted(records.values(), key=lambda r: r.header_offset):
        is_pkl = rec.name.endswith(".pkl")
        if _is_storage(rec.name) or (not is_pkl and rec.file_size > MAX_SIDE_RECORD):
            continue
        try:
            data, problem = _record_bytes(path, f, rec)
        except (zr.ZipError, OSError, struct.error) as e:
            if is_pkl:
                pickles.append(PickleScan(rec.name, 0, 0, 0, 0, (), (), str(e)))
                error = f"record {rec.name} could not be read ({e})"
            continue
        scan = scan_opcodes(io.BytesIO(data), rec.name)
        if not is_pkl and not scan.globals and not scan.findings:
            continue  # a plain side record (version, byteorder) or not a pickle
        pickles.append(scan)
        if problem:
            notes.append(problem)
    if not pickles and not error:
        error = "zip archive without any pickle"
    return FileScan(path, "torch-zip", tuple(pickles), tuple(notes), error)


def _scan_safetensors(path: str) -> FileScan:
    from ckpttools.formats import safetensors_file as sf

    try:
        n, header, size = sf.read_header(path)
        tensors = sf.parse_tensors(path, header, size - 8 - n)
        meta = header.get("__metadata__")
        if meta is not None and not (isinstance(meta, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
            raise CorruptCheckpointError(f"{path}: __metadata__ must map strings to strings")
    except CkptError as e:
        return FileScan(path, "safetensors", error=str(e))
    return FileScan(path, "safetensors", notes=(f"header valid: {len(tensors)} tensors, "
                                                "no executable content",))


def scan_file(path: str) -> FileScan:
    """Scan one file.

    Raises:
        CheckpointNotFoundError: the path does not exist.
    """
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such file or directory")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            if not head:
                return FileScan(path, "pickle", error="empty file")
            if head[:4] in ZIP_MAGIC:
                return _scan_zip(path, f, size)
            if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little"):
                return _scan_safetensors(path)
            legacy = head.startswith(LEGACY_MAGIC[:len(head)]) and len(head) >= len(LEGACY_MAGIC)
            kind = "torch-legacy" if legacy else "pickle"
            label = os.path.basename(path) if os.path.basename(path) == ".metadata" else "pickle"
            pickles, notes = _scan_pickles_back_to_back(
                f, size, label, LEGACY_PICKLES if legacy else ())
    except OSError as e:
        return FileScan(path, "pickle", error=f"cannot read: {e.strerror or e}")
    error = ""
    if pickles and pickles[-1].error:
        error = f"{pickles[-1].name}: {pickles[-1].error}"
        if not any(p.opcodes > 1 for p in pickles):
            error = f"not a pickle or a checkpoint format ckpttools knows ({pickles[-1].error})"
    return FileScan(path, kind, tuple(pickles), tuple(notes), error)


def scan_checkpoint(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> ScanResult:
    """Statically scan checkpoint files for code in their pickles; nothing is executed.

    Args:
        paths: a file, a folder (scanned recursively), a glob, or several of these.

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
    return ScanResult(tuple(scan_file(p) for p in expand_paths(paths)))
