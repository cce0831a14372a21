"""A fast read-only view of a zip archive's central directory and stored records.

``zipfile`` builds a ``ZipInfo`` per record, which dominates listing a checkpoint of tens of
thousands of tensors; torch writes uncompressed records only, so reading them needs no more
than offsets. Compressed records (an archive re-zipped by hand) are read through ``zipfile``.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Callable, Mapping
from itertools import islice
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any, BinaryIO, NamedTuple

from ckpttools.formats import fileio

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
_LOCAL_USED = struct.Struct("<4s2x2H4x3L2H")  # _LOCAL without the version, time and date


ZIP_STORED = 0  # ``zipfile.ZIP_STORED``: records of tensor bytes, read in place


class ZipError(ValueError):
    """The archive's structure is broken; the message says where."""


class ZipRecord(NamedTuple):
    """One record of the central directory."""

    name: str
    header_offset: int
    compress_size: int
    file_size: int
    crc: int
    method: int
    flags: int = 0


def read_directory(f: BinaryIO, size: int) -> dict[str, ZipRecord]:
    """Parse the central directory of an archive of ``size`` bytes. Of two records with one
    name the first is kept (``archive_problems`` reports the duplicate).

    Raises:
        ZipError: no end-of-directory record, or the directory is cut or damaged.
    """
    entries = read_entries(f, size)[0]
    records = dict(zip(map(itemgetter(0), entries), entries))  # one C-level pass (20,000)
    if len(records) != len(entries):  # a name twice: that pass kept its last record
        records = {}
        for rec in entries:
            records.setdefault(rec.name, rec)
    return records


def read_entries(f: BinaryIO, size: int) -> tuple[list[ZipRecord], tuple[int, int, int]]:
    """Every central directory entry in order, and ``(eocd offset, cd offset, cd size)``.

    Raises:
        ZipError: no end-of-directory record, or the directory is cut or damaged.
    """
    tail_len = min(size, 65536 + _EOCD.size)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise ZipError("no end of central directory (truncated)")
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    eocd = size - tail_len + at
    if 0xFFFFFFFF in (cd_size, cd_offset) or count == 0xFFFF:
        loc = at - _EOCD64_LOCATOR.size
        if loc < 0 or tail[loc:loc + 4] != b"PK\x06\x07":
            raise ZipError("zip64 locator missing")
        f.seek(_EOCD64_LOCATOR.unpack_from(tail, loc)[2])
        rec = f.read(_EOCD64.size)
        if len(rec) < _EOCD64.size or rec[:4] != b"PK\x06\x06":
            raise ZipError("zip64 end of directory missing")
        fields = _EOCD64.unpack(rec)
        count, cd_size, cd_offset = fields[7], fields[8], fields[9]
        eocd = _EOCD64_LOCATOR.unpack_from(tail, loc)[2]
    if cd_offset + cd_size > size:
        raise ZipError("central directory runs past the end (truncated)")
    f.seek(cd_offset)
    return _parsed_central(f.read(cd_size), count), (eocd, cd_offset, cd_size)


_PARSED: dict[tuple[int, bytes], tuple[ZipRecord, ...]] = {}


def _parsed_central(data: bytes, count: int) -> list[ZipRecord]:
    """``_parse_central``, remembered for the directory parsed last: ``inspect`` scans the
    archive and then opens it, and both need its directory (20,000 records take 30 ms).
    Keyed by the directory's bytes themselves, so another archive never gets its records."""
    key = (count, data)
    records = _PARSED.get(key)
    if records is None:
        records = tuple(_parse_central(data, count))
        _PARSED.clear()
        _PARSED[key] = records
    return list(records)


_LAST: dict[tuple[int, ...], Mapping[str, ZipRecord]] = {}


def cached_directory(f: BinaryIO) -> Mapping[str, ZipRecord]:
    """``read_directory`` of an open file, remembered for the file read last: detection and
    then the reader both need the directory of the same file (20,000 records take 30 ms).

    The file is recognised by device, inode, size and modification time, so a file replaced
    or rewritten in between is read again. The mapping is read-only, as it is shared.
    """
    key = fileio.file_key(f)
    records = _LAST.get(key)
    if records is None:
        records = MappingProxyType(read_directory(f, fileio.file_size(f)))
        _LAST.clear()
        _LAST[key] = records
    return records


_CENTRAL_BODY = struct.Struct("<6H3L5H2L")  # a central entry after its signature


def _split_central(data: bytes, count: int) -> list[ZipRecord] | None:
    """``_parse_central`` of a directory whose entries all split plainly at their signatures
    (20,000 entries without a position computed, a slice and a signature compared each), else
    None. Each piece between two signatures must be exactly one entry, its fixed fields, name,
    extra field and comment, so the pieces are the entries ``_parse_central`` walks to; a
    signature inside a name, a count that differs, a zip64 entry or any other length gives
    None and the walk reads it."""
    pieces = data.split(b"PK\x01\x02")
    if len(pieces) != count + 1 or pieces[0]:
        return None
    unpack, fixed, new = _CENTRAL_BODY.unpack_from, _CENTRAL_BODY.size, tuple.__new__
    records: list[ZipRecord] = []
    append = records.append
    for piece in islice(pieces, 1, None):
        if len(piece) < fixed:
            return None
        (_, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _,
         offset) = unpack(piece)
        if len(piece) != fixed + nlen + elen + clen or 0xFFFFFFFF in (csize, usize, offset):
            return None
        append(new(ZipRecord, (piece[fixed:fixed + nlen].decode("utf-8" if flags & 0x800 else "cp437"),
                               offset, csize, usize, crc, method, flags)))
    return records


def _parse_central(data: bytes, count: int) -> list[ZipRecord]:
    split = _split_central(data, count)
    if split is not None:
        return split
    return _walk_central(data, count)


def _walk_central(data: bytes, count: int) -> list[ZipRecord]:
    records: list[ZipRecord] = []
    pos = 0
    unpack = _CENTRAL.unpack_from
    new = tuple.__new__  # skips NamedTuple.__new__'s Python-level argument handling
    for _ in range(count):
        if pos + _CENTRAL.size > len(data) or data[pos:pos + 4] != b"PK\x01\x02":
            raise ZipError("bad central directory entry")
        (_, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _,
         offset) = unpack(data, pos)
        start = pos + _CENTRAL.size
        raw = data[start:start + nlen]
        name = raw.decode("utf-8" if flags & 0x800 else "cp437")
        if 0xFFFFFFFF in (csize, usize, offset):
            usize, csize, offset = _zip64_sizes(data[start + nlen:start + nlen + elen],
                                                usize, csize, offset)
        records.append(new(ZipRecord, (name, offset, csize, usize, crc, method, flags)))
        pos = start + nlen + elen + clen
    if pos != len(data):
        raise ZipError("the central directory holds more than its end record counts (damaged)")
    return records


def _zip64_sizes(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            if usize == 0xFFFFFFFF:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF:
                offset = values.pop(0)
            break
        pos += 4 + length
    return usize, csize, offset


LOCAL_HEADER_SIZE = _LOCAL.size


def data_offset(f: BinaryIO, record: ZipRecord) -> int:
    """Absolute offset of a record's bytes, after its local header."""
    f.seek(record.header_offset)
    return offset_after(record, f.read(_LOCAL.size))


def offset_after(record: ZipRecord, header: bytes) -> int:
    """``data_offset`` from the record's local header bytes, already read."""
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise ZipError(f"record {record.name} has a bad local header")
    name_len, extra_len = _LOCAL.unpack(header)[9:11]
    return record.header_offset + _LOCAL.size + name_len + extra_len


def read_record(path: str, f: BinaryIO, record: ZipRecord) -> bytes:
    """A record's bytes, CRC-checked.

    Raises:
        ZipError: the record is cut short, fails its CRC or cannot be decompressed.
    """
    if record.method != ZIP_STORED:
        import zipfile  # a compressed record (not torch's): imported for it only

        try:
            with zipfile.ZipFile(f) as zf:
                return zf.read(record.name)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise ZipError(f"record {record.name}: {e}") from e
    f.seek(data_offset(f, record))
    data = f.read(record.file_size)
    if len(data) < record.file_size:
        raise ZipError(f"record {record.name} is cut short (truncated)")
    # NOTE: torch.serialization.set_crc32_options(False) writes 0; torch never checks CRCs
    if record.crc and zlib.crc32(data) != record.crc:
        raise ZipError(f"record {record.name} fails its CRC check (damaged)")
    return data


Listing = tuple[list[ZipRecord], tuple[int, int, int]]


def archive_problems(f: BinaryIO, size: int, listing: Listing | None = None,
                     starts: dict[int, int] | None = None, buf: Any = None) -> list[str]:
    """Where zip readers could disagree on what the archive holds.

    torch (miniz) finds a record case-insensitively, Python's ``zipfile`` keeps the last of two
    names and shifts offsets past prepended data, other tools walk local headers. The archive is
    unambiguous only when each name is unique, the records tile the file from offset 0 to the
    central directory with nothing between or overlapping, each local header agrees with its
    central entry, and only one end record is present.

    Args:
        f: the archive.
        size: its size.
        listing: what ``read_entries`` returned for it, if the caller has it already.
        starts: filled with each record's data offset by its header offset, for the records
            whose local header is sound (what ``data_offset`` would return for them).
        buf: the archive's bytes (bytes or an mmap), when the caller has them: local headers
            are then read in place, without a read call each (20,000 records).

    Raises:
        ZipError: the central directory cannot be read at all.
    """
    entries, (eocd, cd_offset, cd_size) = listing or read_entries(f, size)
    problems: list[str] = []
    seen: dict[str, str] = {}
    # no two names alike in any case (one C-level pass over 20,000), else each is asked
    names = list(map(itemgetter(0), entries))
    for rec in entries if len(set(map(str.lower, names))) != len(names) else ():
        other = seen.setdefault(rec.name.lower(), rec.name)
        if other is not rec.name:
            problems.append(f"two records named {rec.name!r}" + (
                "" if other == rec.name else f" and {other!r} (torch ignores case)"))
    pos = 0
    read_at = _reader_at(f)
    plain = isinstance(buf, (bytes, mmap.mmap))
    found = {} if starts is None else starts
    ordered = sorted(entries, key=attrgetter("header_offset"))
    i = 0
    while i < len(ordered):
        if plain:  # the sound records that tile on from ``pos``, read in place
            i, pos = _plain_tiles(buf, ordered, i, pos, found)
            if i == len(ordered):
                break
        rec = ordered[i]
        if rec.header_offset != pos:
            what = "overlaps the one before" if rec.header_offset < pos else "has bytes before it"
            problems.append(f"record {rec.name!r} at {rec.header_offset} {what}")
        end = _plain_end(buf, rec, found) if plain else None
        pos = end if end is not None else _record_end(read_at, rec, problems, found)
        i += 1
    if pos != cd_offset or cd_offset + cd_size > eocd:
        problems.append(f"bytes between the records and the central directory ({pos}..{cd_offset})")
    f.seek(max(0, size - 65536 - _EOCD.size))
    if f.read().count(b"PK\x05\x06") > 1:
        problems.append("more than one end-of-directory record")
    return problems


def _reader_at(f: BinaryIO) -> Callable[[int, int], bytes]:
    """``read_at(pos, n)``: ``f``'s own ``pread`` (a mapped file's: one call, not a seek and a
    read, for each of 20,000 local headers), else a seek and a read."""
    pread = getattr(f, "pread", None)
    if pread is not None:
        return pread  # type: ignore[no-any-return]

    def read_at(pos: int, n: int) -> bytes:
        f.seek(pos)
        return f.read(n)
    return read_at


_DESCRIBED = 0x08  # the sizes and CRC follow the data, in a data descriptor


def _plain_tiles(buf: Any, ordered: list[ZipRecord], i: int, pos: int,
                 starts: dict[int, int]) -> tuple[int, int]:
    """``_plain_end`` of ``ordered[i]`` and the records after it, in one loop (20,000 records),
    while each starts where the one before ends and its local header is plain: the sizes and
    CRC as in the central entry or deferred to a descriptor (no zip64), the same method and
    name. Returns the index of the first other record and where the last one taken ends."""
    unpack, size, n = _LOCAL_USED.unpack_from, _LOCAL.size, len(buf)
    for i in range(i, len(ordered)):
        name, at, csize, usize, crc, method, _ = ordered[i]
        if at != pos or at + size > n:
            return i, pos
        sig, flags, lmethod, lcrc, lcsize, lusize, nlen, elen = unpack(buf, at)
        if sig != b"PK\x03\x04" or lmethod != method or csize >= 0xFFFFFFFF:
            return i, pos
        if lcrc or lcsize or lusize:  # the sizes and CRC here: the central entry's, no zip64
            if lcrc != crc or lcsize != csize or lusize != usize or lcsize == 0xFFFFFFFF \
                    or lusize == 0xFFFFFFFF:
                return i, pos
        elif not flags & _DESCRIBED and (crc or csize or usize):  # none, and no descriptor
            return i, pos
        if str(buf[at + size:at + size + nlen], "utf-8" if flags & 0x800 else "cp437",
               "replace") != name:
            return i, pos
        start = at + size + nlen + elen
        starts[at] = start
        pos = start + csize
        if flags & _DESCRIBED:  # as in _record_end
            if buf[pos:pos + 4] == b"PK\x07\x08":
                pos += 4
            pos += 12  # CRC and two 4-byte sizes (zip64 records are left to _plain_end)
    return len(ordered), pos


def _plain_end(buf: Any, rec: ZipRecord, starts: dict[int, int]) -> int | None:
    """``_record_end`` of a sound record, read in place: a local header that agrees with the
    central entry (torch's records defer their sizes to a data descriptor, which is read
    as ``_record_end`` reads it). None for any other record: ``_record_end`` then reads it
    and says what is wrong."""
    at = rec.header_offset
    if buf[at:at + 4] != b"PK\x03\x04" or at + _LOCAL.size > len(buf):
        return None
    _, _, flags, method, _, _, crc, csize, usize, nlen, elen = _LOCAL.unpack_from(buf, at)
    if 0xFFFFFFFF in (csize, usize) or (flags & 0x08 and (crc, csize, usize) == (0, 0, 0)):
        csize, usize, crc = rec.compress_size, rec.file_size, rec.crc
    start = at + _LOCAL.size + nlen + elen
    if (method, crc, csize, usize) != (rec.method, rec.crc, rec.compress_size, rec.file_size) \
            or str(buf[at + _LOCAL.size:at + _LOCAL.size + nlen],
                   "utf-8" if flags & 0x800 else "cp437", "replace") != rec.name:
        return None
    starts[at] = start
    end = start + rec.compress_size
    if flags & 0x08:  # as in _record_end
        end += 4 if buf[end:end + 4] == b"PK\x07\x08" else 0
        sizes = buf[end + 4:end + 20]
        wide = int.from_bytes(sizes[:8], "little") == rec.compress_size and len(sizes) == 16
        end += 4 + (16 if wide and rec.compress_size >= 0xFFFFFFFF else 8)
    return end


def _record_end(read_at: Callable[[int, int], bytes], rec: ZipRecord, problems: list[str],
                starts: dict[int, int]) -> int:
    """Check ``rec``'s local header against its central entry; return where its bytes end."""
    # the header and the name as the central entry has it, in one read (20,000 records)
    header = read_at(rec.header_offset, _LOCAL.size + len(rec.name.encode()))
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        problems.append(f"record {rec.name!r} has no local header")
        return rec.header_offset
    _, _, flags, method, _, _, crc, csize, usize, nlen, elen = _LOCAL.unpack_from(header)
    starts[rec.header_offset] = rec.header_offset + _LOCAL.size + nlen + elen
    raw = header[_LOCAL.size:_LOCAL.size + nlen]
    if len(raw) < nlen:  # the local name is longer than the central one
        raw = read_at(rec.header_offset + _LOCAL.size, nlen)
    name = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    deferred = flags & 0x08 and (crc, csize, usize) == (0, 0, 0)
    if 0xFFFFFFFF in (csize, usize) or deferred:
        csize, usize, crc = rec.compress_size, rec.file_size, rec.crc
    if (name, method, crc, csize, usize) != (rec.name, rec.method, rec.crc, rec.compress_size,
                                             rec.file_size):
        problems.append(f"record {rec.name!r}: local header and central directory differ")
    end = rec.header_offset + _LOCAL.size + nlen + elen + rec.compress_size
    if flags & 0x08:  # a data descriptor follows: optional signature, CRC, two sizes (4 or 8)
        desc = read_at(end, 4)
        end += 4 if desc == b"PK\x07\x08" else 0
        sizes = read_at(end + 4, 16)
        wide = int.from_bytes(sizes[:8], "little") == rec.compress_size and len(sizes) == 16
        end += 4 + (16 if wide and rec.compress_size >= 0xFFFFFFFF else 8)
    return end


def check_windows(entries: list[ZipRecord], cd_offset: int,
                  head: Callable[[ZipRecord], int]) -> list[tuple[int, int]]:
    """The spans ``archive_problems`` and a record-by-record scan read, for fetching them at
    once: each record's local header (name and up to 72 bytes of extra field: torch pads its
    data to 64 bytes), ``head(record)`` first bytes of its data, and the 32 bytes before it
    and before the directory (a data descriptor). A header with a longer extra field is read
    outside these spans, by its own request."""
    spans = [(r.header_offset - 32, r.header_offset + _LOCAL.size + len(r.name.encode()) + 72
              + head(r)) for r in entries]
    return spans + [(cd_offset - 32, cd_offset)]


def file_size(f: BinaryIO) -> int:
    return fileio.file_size(f)
