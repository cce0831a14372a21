"""Every pickle a loader could unpickle from a blob of bytes, found the way the loaders find
them: torch zip archives (as torch's reader resolves records) and every record that parses as a
pickle, nested archives, the legacy layout (five pickles, or the tar with ``storages``,
``tensors`` and ``pickle`` members), gzip/bz2/lzma-compressed pickles, ``.npy``/``.npz`` object
arrays, and bare pickles back to back without a count limit.

Nothing is unpickled. Work is linear in the input: decompression is capped, nesting is capped.
"""

from __future__ import annotations

import ast
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

from ckpttools.formats import zip_records as zr
from ckpttools.formats.pickle.opwalk import MAX_TUPLE_DEPTH, fails_early, remember_walk
from ckpttools.formats.sniff import is_legacy_magic
from ckpttools.formats.pickle.stand_ins import ITEMSIZE, STORAGE_DTYPES
from ckpttools.ops.audit.opcodes import Finding, PickleScan, scan_opcodes

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
LEGACY_PICKLES = ("magic number", "protocol version", "sys_info", "data", "storage keys")
MAX_NESTING = 4  # archives and compressed streams inside each other
MAX_INFLATE = 1 << 30  # decompressed bytes per stream, and at most this many times the input


# the compression and tar modules are imported when a file needs them: most scans (every torch
# zip) never do, and importing them took 3-4 ms of every command's start-up
def _gzip_file(f: Any) -> Any:
    import gzip

    return gzip.GzipFile(fileobj=f)


def _bz2_file(f: Any) -> Any:
    import bz2

    return bz2.BZ2File(f)


def _lzma_file(f: Any) -> Any:
    import lzma

    return lzma.LZMAFile(f)


_COMPRESSED: dict[bytes, tuple[str, Callable[..., Any]]] = {
    b"\x1f\x8b": ("gzip", _gzip_file), b"BZh": ("bz2", _bz2_file),
    b"\xfd7zXZ\x00": ("xz", _lzma_file), b"\x5d\x00\x00": ("lzma", _lzma_file),
}
AMBIGUOUS = "ambiguous archive: tools read different data"


@dataclass
class Found:
    """What a blob held: its kind, the pickles walked, findings, notes and errors."""

    kind: str = "pickle"
    pickles: list[PickleScan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, other: Found) -> None:
        self.pickles += other.pickles
        self.notes += other.notes
        self.errors += other.errors


def _flag(found: Found, label: str, message: str, safety: str = "unsafe") -> None:
    found.pickles.append(PickleScan(label, 0, 0, 0, 0, (), (Finding(safety, 0, message),)))


def scan_blob(data: Any, label: str, depth: int = 0) -> Found:
    """Find and walk every pickle in ``data`` (bytes or mmap), by content.

    Args:
        data: the bytes of a file or record.
        label: how to name what is found (``model.pt``, ``archive/data.pkl``).
        depth: nesting level of archives and compressed streams.
    """
    head = bytes(data[:16])
    if depth > MAX_NESTING:
        found = Found("nested")
        found.errors.append(f"{label}: archives nested more than {MAX_NESTING} deep")
        return found
    if head[:4] in ZIP_MAGIC:
        return scan_zip(data, label, depth)
    for magic, (kind, opener) in _COMPRESSED.items():
        if head.startswith(magic):
            return _scan_compressed(data, label, depth, kind, opener)
    if head.startswith(b"\x93NUMPY"):
        return _scan_npy(data, label)
    if _is_tar(data):
        return _scan_tar(data, label, depth)
    return scan_pickles(data, label)


# ---- bare pickles and the legacy layout ----------------------------------------------------


def _is_legacy_magic(data: Any, scan: PickleScan) -> bool:
    """Whether the first pickle is torch's legacy magic number (any protocol)."""
    if scan.error or scan.globals or scan.end - scan.offset > 64:
        return False
    return is_legacy_magic(bytes(data[scan.offset:scan.end]))


def scan_pickles(data: Any, label: str) -> Found:
    """Pickles back to back from offset 0 until the bytes stop being a pickle (no count limit).
    A legacy torch file stops after its five pickles: storage bytes follow."""
    found = Found("pickle")
    size, pos = len(data), 0
    while pos < size:
        i = len(found.pickles)
        names = LEGACY_PICKLES if found.kind == "torch-legacy" else ()
        name = f"{label} ({names[i]})" if names else (label if i == 0 else f"{label} #{i + 1}")
        scan = scan_opcodes(data, name, pos)
        if i and scan.error and not scan.globals and not scan.findings and scan.opcodes <= 1:
            found.notes.append(f"{size - pos} bytes after pickle {i} are not a pickle "
                               "(a loader stops before them)")
            break
        found.pickles.append(scan)
        if scan.error:
            found.errors.append(f"{name}: {scan.error}")
            break
        if scan.tuple_depth > MAX_TUPLE_DEPTH:
            found.errors.append(f"{name}: tuples nest more than {MAX_TUPLE_DEPTH} deep; "
                                "unpickling it crashes the interpreter")
            break
        if i == 0 and _is_legacy_magic(data, scan):
            found.kind = "torch-legacy"
            found.pickles[0] = replace(scan, name=f"{label} ({LEGACY_PICKLES[0]})")
        pos = scan.end
        if found.kind == "torch-legacy" and len(found.pickles) == len(LEGACY_PICKLES):
            break
    if found.kind == "torch-legacy" and len(found.pickles) < len(LEGACY_PICKLES) \
            and not found.errors:
        found.errors.append(f"{label}: legacy file ends after {len(found.pickles)} pickles")
    first = found.pickles[0] if found.pickles else None
    if first is None or (first.error and first.opcodes <= 1 and not first.globals):
        why = f" ({first.error})" if first is not None else ""
        found.errors = [f"{label}: not a pickle or a checkpoint format ckpttools knows{why}"]
    return found


# ---- zip archives --------------------------------------------------------------------------


def _record_span(data: Any, rec: zr.ZipRecord, budget: int,
                 starts: dict[int, int] | None = None) -> tuple[Any, int, int]:
    """``(buffer, start, end)`` of a record's bytes: a range of ``data`` when stored (no copy),
    else its inflated bytes (up to ``budget``). ``starts``: data offsets by header offset,
    as ``archive_problems`` found them reading the same local headers."""
    at = rec.header_offset  # one slice of the local header: 20,000 records, 20,000 slices
    start = starts.get(at) if starts else None
    if start is None:
        start = zr.offset_after(rec, bytes(data[at:at + zr.LOCAL_HEADER_SIZE]))
    if start + rec.compress_size > len(data):
        raise zr.ZipError(f"record {rec.name} is cut short (truncated)")
    if rec.method == 0:
        return data, start, start + rec.compress_size
    if rec.method != 8:
        raise zr.ZipError(f"record {rec.name} uses compression method {rec.method}")
    d = zlib.decompressobj(-15)
    out = d.decompress(bytes(data[start:start + rec.compress_size]), budget)
    if d.unconsumed_tail:
        raise zr.ZipError(f"record {rec.name} inflates to more than {budget} bytes")
    return out, 0, len(out)


def _view(data: Any) -> io.BytesIO:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else _MapFile(data)


class _MapFile(io.RawIOBase):
    """A seekable file over an mmap without copying it."""

    def __init__(self, buf: Any) -> None:
        self._buf, self._pos = buf, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (len(self._buf) + pos if whence == 2 else self._pos + pos)
        return self._pos

    def pread(self, pos: int, n: int) -> bytes:
        """``n`` bytes at ``pos`` (fewer at the end), as ``seek`` then ``read`` give them."""
        out = bytes(self._buf[pos:pos + n])
        self._pos = pos + len(out)
        return out

    def read(self, n: int = -1) -> bytes:
        end = len(self._buf) if n < 0 else self._pos + n
        out = bytes(self._buf[self._pos:end])
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def _torch_pickle(entries: list[zr.ZipRecord]) -> str | None:
    """The record ``torch.load`` unpickles (with ``weights_only=True`` or without): ``<prefix>/data.pkl``,
    the prefix being the folder of the first central directory entry, matched case-insensitively as
    miniz does. The scan walks it statically; nothing here unpickles it."""
    if not entries or "/" not in entries[0].name:
        return None
    want = entries[0].name.split("/", 1)[0].lower() + "/data.pkl"
    return next((r.name for r in entries if r.name.lower() == want), None)


def scan_zip(data: Any, label: str, depth: int = 0) -> Found:
    """Every record of an archive that parses as a pickle (or holds one), and ambiguities."""
    found = Found("zip")
    starts: dict[int, int] = {}  # each record's data offset, from its local header
    f = _view(data)
    size = len(data)
    remote = getattr(data, "remote", False)
    try:
        listing = zr.read_entries(f, size)  # type: ignore[arg-type]
        entries, (_, cd_offset, _) = listing
        if remote:  # the checks read each local header and record start: fetched at once
            main = _torch_pickle(entries)
            data.prefetch_windows(zr.check_windows(entries, cd_offset, lambda r: (
                0 if _is_storage(r.name, main) else min(r.compress_size, 256))))
        problems = zr.archive_problems(f, size, listing, starts, data)  # type: ignore[arg-type]
    except (zr.ZipError, struct.error, UnicodeDecodeError) as e:
        entries, problems = _local_entries(f, size), []
        found.errors.append(f"{label}: not a readable zip archive ({e})")
        found.notes.append(f"central directory unreadable; read {len(entries)} local headers")
    for problem in problems:
        _flag(found, label, f"{AMBIGUOUS} ({problem})")
    main = _torch_pickle(entries)
    if main is not None:
        found.kind = "torch-zip"
    if "constants.pkl" in "\n".join(map(attrgetter("name"), entries)) and \
            any(r.name.endswith("constants.pkl") for r in entries):
        # its records are read by TorchScript's own unpickler, not Python's: the code is the risk
        found.kind = "torchscript"
        _flag(found, label, "a TorchScript archive: torch.load(weights_only=False) hands it to "
                            "torch.jit.load, which runs its code", "unknown")
        return found
    # ``_is_storage`` with its prefix made once (20,000 records)
    prefix = main[:-len("data.pkl")] + "data/" if main is not None else None
    inflate = min(MAX_INFLATE, max(64 << 20, 100 * size))
    # records tile the file once; overlapping ones (already dangerous) would make it quadratic
    span_budget, inflate_budget = size, inflate
    for rec in entries:
        name, offset, csize, usize, _, method, _ = rec  # one unpacking, not six lookups (20,000)
        span_budget -= csize
        inflate_budget -= usize if method else 0
        if span_budget < 0 or inflate_budget < 0:
            found.errors.append(f"{label}: records overlap or inflate too much to scan them all")
            break
        storage = prefix is not None and name.startswith(prefix) and not name.lower().endswith(".pkl")
        start = starts.get(offset) if storage and method == 0 else None
        if start is not None and start + csize <= size:
            continue  # stored tensor bytes within the file: what _scan_record finds, without a call
        _scan_record(data, rec, f"{label}:{rec.name}" if depth else rec.name, rec.name == main,
                     inflate, depth, found, storage, starts)
    if entries and all(r.name.endswith(".npy") for r in entries):
        found.kind = "npz"
    elif main is None and not found.errors:
        found.errors.append(f"{label}: zip archive without <folder>/data.pkl; torch.load "
                            "cannot read it")
    return found


def _is_storage(name: str, main: str | None) -> bool:
    """A tensor storage record of a torch zip (``<prefix>/data/<key>``): ``torch.load`` (either
    ``weights_only`` setting) reads its bytes as tensor data and never unpickles or unpacks them."""
    if main is None or name.lower().endswith(".pkl"):
        return False
    return name.startswith(main[:-len("data.pkl")] + "data/")


def _scan_record(data: Any, rec: zr.ZipRecord, name: str, is_main: bool, budget: int,
                 depth: int, found: Found, storage: bool = False,
                 starts: dict[int, int] | None = None) -> None:
    try:
        buf, start, end = _record_span(data, rec, budget, starts)
    except (zr.ZipError, zlib.error, struct.error) as e:
        found.errors.append(f"{name}: {e}")
        return
    if storage:  # random tensor bytes start like a pickle or a gzip stream now and then
        return
    head = bytes(buf[start:min(start + 6, end)])  # an empty record must not show the next one's header
    if not is_main and (head[:4] in ZIP_MAGIC or head.startswith(tuple(_COMPRESSED))
                        or head == b"\x93NUMPY"):
        inner = scan_blob(bytes(buf[start:end]), name, depth + 1)
        if head[:4] in ZIP_MAGIC and inner.pickles and inner.kind != "zip":
            _flag(found, name, f"{AMBIGUOUS} (a {inner.kind} archive nested in a record)")
        found.add(inner)
        return
    if not (is_main or rec.name.lower().endswith(".pkl")) and fails_early(buf, start, end):
        return  # tensor bytes: not a pickle within a few opcodes (the walk would stop there too)
    scan = scan_opcodes(buf, name, start, end)
    # torch's pickle, a .pkl record, or any record that is a whole pickle (a renamed one); the
    # bytes of a tensor record often start like opcodes, but never run to a STOP
    if is_main or rec.name.lower().endswith(".pkl") or (not scan.error and scan.opcodes > 1):
        found.pickles.append(scan)
        if scan.error:
            found.errors.append(f"{name}: {scan.error}")
        elif scan.tuple_depth > MAX_TUPLE_DEPTH:
            found.errors.append(f"{name}: tuples nest more than {MAX_TUPLE_DEPTH} deep")
        elif is_main:  # the reader asks the same of the same bytes next (inspect, audit)
            remember_walk(bytes(buf[start:scan.end]), scan.tuple_depth, scan.hostile)


def _local_entries(f: io.IOBase, size: int) -> list[zr.ZipRecord]:
    """Records found by local headers alone, for an archive whose directory is unreadable."""
    out: list[zr.ZipRecord] = []
    pos = 0
    while pos + 30 <= size and len(out) < 1_000_000:
        f.seek(pos)
        head = f.read(30)
        if head[:4] != b"PK\x03\x04":
            pos = _next_local(f, pos + 1, size)  # past a directory: a stacked archive
            continue
        _, _, flags, method, _, _, crc, csize, usize, nlen, elen = struct.unpack("<4s5H3L2H", head)
        name = f.read(nlen).decode("utf-8", "replace")
        start = pos + 30 + nlen + elen
        if csize == 0 and flags & 0x08:
            f.seek(start)
            rest = f.read(size - start)
            nxt = [i for i in (rest.find(b"PK\x03\x04"), rest.find(b"PK\x01\x02")) if i >= 0]
            csize = usize = max(0, (min(nxt) if nxt else len(rest)) - 16)
        out.append(zr.ZipRecord(name, pos, csize, usize, 0, method, flags))
        pos = start + csize + (16 if flags & 0x08 else 0)
    return out


def _next_local(f: io.IOBase, pos: int, size: int) -> int:
    while pos < size:
        f.seek(pos)
        block = f.read(1 << 20)
        at = block.find(b"PK\x03\x04")
        if at >= 0:
            return pos + at
        pos += max(1, len(block) - 3)
    return size


# ---- tar, compressed, numpy ----------------------------------------------------------------


def _is_tar(data: Any) -> bool:
    return len(data) >= 512 and bytes(data[257:262]) == b"ustar"


def _scan_tar(data: Any, label: str, depth: int) -> Found:
    """torch's legacy tar: ``storages`` (a count, then per storage a pickle and raw bytes),
    ``tensors`` (likewise with a binary shape), ``pickle``; other members by content."""
    import tarfile

    found = Found("torch-legacy-tar")
    try:
        with tarfile.open(fileobj=_view(data), mode="r:") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                blob = tar.extractfile(member).read()  # type: ignore[union-attr]
                name = f"{label}:{member.name}"
                if member.name in ("storages", "tensors"):
                    found.add(_scan_counted(blob, name, member.name == "storages"))
                else:
                    found.add(scan_blob(blob, name, depth + 1) if member.name != "pickle"
                              else scan_pickles(blob, name))
    except (tarfile.TarError, OSError, EOFError) as e:
        found.errors.append(f"{label}: not a readable tar archive ({e})")
    return found


def _scan_counted(blob: bytes, name: str, storages: bool) -> Found:
    """A count pickle, then per item a pickle followed by raw bytes torch reads directly."""
    found = Found("pickle")
    first = scan_opcodes(blob, f"{name} (count)")
    found.pickles.append(first)
    pos, i = first.end, 0
    while not first.error and pos < len(blob):
        scan = scan_opcodes(blob, f"{name} #{i + 1}", pos)
        found.pickles.append(scan)
        if scan.error:
            found.errors.append(f"{name}: {scan.error}")
            return found
        pos = scan.end
        if storages and i >= 0:
            itemsize = next((ITEMSIZE.get(STORAGE_DTYPES.get(g.name, ""), 0)
                             for g in scan.globals if g.name.endswith("Storage")), 0)
            numel = int.from_bytes(blob[pos:pos + 8], "little", signed=True)
            if not itemsize or numel < 0:
                break  # the storage_views pickle follows the storages
            pos += 8 + numel * itemsize
        elif not storages:
            ndim = int.from_bytes(blob[pos:pos + 4], "little", signed=True)
            if ndim < 0:
                found.errors.append(f"{name}: negative tensor rank")
                return found
            pos += 8 + 16 * ndim + 8
        i += 1
    if first.error:
        found.errors.append(f"{name}: {first.error}")
    return found


def _scan_compressed(data: Any, label: str, depth: int, kind: str,
                     opener: Callable[..., Any]) -> Found:
    import lzma

    budget = min(MAX_INFLATE, max(64 << 20, 100 * len(data)))
    try:
        with opener(_view(data)) as stream:
            blob = stream.read(budget + 1)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        found = Found(kind)
        found.errors.append(f"{label}: not a readable {kind} stream ({e})")
        return found
    if len(blob) > budget:
        found = Found(kind)
        found.errors.append(f"{label}: {kind} stream inflates past {budget} bytes")
        return found
    inner = scan_blob(blob, f"{label} ({kind})", depth + 1)
    inner.kind = f"{kind}+{inner.kind}"
    return inner


def _scan_npy(data: Any, label: str) -> Found:
    """A ``.npy`` array: its header is a Python literal; object arrays are a pickle after it."""
    found = Found("npy")
    head = bytes(data[:12])
    major = head[6] if len(head) > 6 else 0
    width = 2 if major == 1 else 4
    hlen = int.from_bytes(head[8:8 + width], "little")
    start = 8 + width + hlen
    try:
        header = ast.literal_eval(bytes(data[8 + width:start]).decode("latin-1"))
        descr = header["descr"]
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as e:
        found.errors.append(f"{label}: not a readable .npy header ({type(e).__name__})")
        return found
    if "O" in str(descr):
        inner = scan_pickles(data[start:], f"{label} (object array)")
        found.pickles, found.errors = inner.pickles[:1], inner.errors[:1]
    else:
        found.notes.append(f"numpy array of {descr}; no pickle")
    return found
