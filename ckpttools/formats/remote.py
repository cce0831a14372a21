"""Checkpoints behind URLs, read by byte ranges through fsspec (imported only for a URL).

``http(s)://`` goes through fsspec's ``HTTPFileSystem`` session (aiohttp), ``hf://ORG/REPO[@REV]/PATH``
is resolved with ``huggingface_hub`` (``HF_ENDPOINT``, the token from ``HF_TOKEN`` or the login,
the local cache for a commit revision) to its ``/resolve/`` URL, and ``s3://BUCKET/KEY`` goes
through ``s3fs`` (endpoint and credentials from the usual AWS settings); ``remote_sources.py``
holds those.

A URL opens as ``RemoteFile``: reads are served from aligned blocks fetched by one ranged GET per
contiguous run of missing blocks (plus one block read ahead), so listing a torch zip is its head,
its tail and its pickle; reads of tensor data skip the cache. ``fetch_ranges`` fetches several
ranges concurrently for commands that need values.
"""

from __future__ import annotations

import bisect
import io
import os
import posixpath
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from ckpttools.errors import CheckpointNotFoundError, CorruptCheckpointError
from ckpttools.formats import remote_multi
from ckpttools.formats import remote_sources as src
from ckpttools.formats.remote_http import Http, Spill, cached_path, clear_commits
from ckpttools.formats.remote_sources import COUNTERS, SETTINGS, parse_hf

__all__ = ["COUNTERS", "SETTINGS", "RemoteBytes", "RemoteFile", "cached_path", "clear", "fetch_ranges",
           "open_url", "parse_hf", "plan_reads", "prefetch"]

BLOCK = 128 * 1024
DIRECT = 4 * 2**20  # reads at least this long (tensor data) are fetched as they are, uncached
CACHE_LIMIT = 64 * 2**20  # block cache per file
PAGE = 4096  # a small read (a zip local header) with no cached block or window fetches 2 pages
WINDOW_LIMIT = 16 * 2**20  # bytes of small windows kept per file
PARALLEL = src.PARALLEL


# ---- one remote file: size, blocks, reads --------------------------------------------------


class _Blob:
    """What is known of one URL: its size and the blocks fetched so far (LRU, bounded)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.source: Any = src.S3(url) if url.startswith("s3://") else Http(url)
        try:
            head = self.source.probe(2 * BLOCK)
        except src.NoRangeError:
            if not SETTINGS.whole_file_ok:
                raise
            warnings.warn(f"{url}: the server ignores Range requests; reading the whole file once",
                          stacklevel=2)
            self.source = Spill(url, self.source)
            head = self.source.probe(2 * BLOCK)
        self.size: int = self.source.size
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        # small spans far from any block (local headers), by start; ``_starts`` sorted
        self.windows: dict[int, bytes] = {}
        self._starts: list[int] = []
        self._lock = threading.Lock()
        for i in range(0, len(head), BLOCK):
            if len(head[i:i + BLOCK]) == BLOCK or i + BLOCK >= self.size:
                self.blocks[i // BLOCK] = head[i:i + BLOCK]

    def window(self, start: int, end: int) -> tuple[int, bytes] | None:
        """The cached window (its start and bytes) holding ``[start, end)``, if one does."""
        i = bisect.bisect_right(self._starts, start)
        for lo in reversed(self._starts[max(0, i - 4):i]):  # windows may overlap: a few back
            data = self.windows[lo]
            if end <= lo + len(data):
                return lo, data
        return None

    def _keep(self, lo: int, data: bytes) -> None:
        if sum(map(len, self.windows.values())) + len(data) > WINDOW_LIMIT:
            self.windows.clear()
            self._starts.clear()
        if lo not in self.windows:
            bisect.insort(self._starts, lo)
        if len(data) >= len(self.windows.get(lo, b"")):
            self.windows[lo] = data

    def _page(self, start: int, end: int) -> bytes:
        found = self.window(start, end)
        if found is None:
            lo = start - start % PAGE
            found = (lo, self.source.fetch([(lo, min(self.size, max(end, lo + 2 * PAGE)))])[0])
            self._keep(*found)
        lo, data = found
        return data[start - lo:end - lo]

    def prefetch_windows(self, spans: Sequence[tuple[int, int]]) -> None:
        """Fetch, at once, the small spans no cached block or window holds (a zip's local
        headers and its records' first bytes, which the archive checks then read one by one):
        one multi-range request where the server answers those (see ``remote_multi``)."""
        with self._lock:
            todo = [(max(0, s), min(self.size, e)) for s, e in spans if e > s]
            todo = [(s, e) for s, e in remote_multi.coalesce(todo, remote_multi.GAP)
                    if not self._holds(s, e)]
            if not todo:
                return
            for (lo, _), data in zip(todo, remote_multi.fetch_windows(self.source, todo)):
                self._keep(lo, data)

    def _holds(self, start: int, end: int) -> bool:
        blocks = all(b in self.blocks for b in range(start // BLOCK, (end - 1) // BLOCK + 1))
        return blocks or self.window(start, end) is not None

    def close(self) -> None:
        """Drop a downloaded copy (a server without Range support); the rest is memory."""
        getattr(self.source, "close", lambda: None)()

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start:end``: from the cache, by one request for what is missing, or (long
        reads) fetched directly."""
        end = min(end, self.size)
        if end <= start:
            return b""
        planned = getattr(self.source, "covers", None)
        if planned is not None and planned(start, end):  # announced: from the window in flight
            return b"".join(self.source.read_ahead(start, end))
        if end - start >= DIRECT:
            return self.source.fetch([(start, end)])[0]
        with self._lock:  # a reader's read-ahead thread may share the file
            return self._cached(start, end)

    def _cached(self, start: int, end: int) -> bytes:
        first, last = start // BLOCK, (end - 1) // BLOCK
        missing = [b for b in range(first, last + 1) if b not in self.blocks]
        if missing and end - start <= PAGE:  # a lone header: its window or a page, not two blocks
            return self._page(start, end)
        if missing:
            lo = missing[0] * BLOCK
            hi = min((missing[-1] + 2) * BLOCK, self.size)  # one block read ahead
            data = self.source.fetch([(lo, hi)])[0]
            for i in range(0, len(data), BLOCK):
                self.blocks[(lo + i) // BLOCK] = data[i:i + BLOCK]
        for b in range(first, last + 1):
            self.blocks.move_to_end(b)
        while len(self.blocks) * BLOCK > CACHE_LIMIT:
            self.blocks.popitem(last=False)
        joined = b"".join(self.blocks[b] for b in range(first, last + 1))
        return joined[start - first * BLOCK:end - first * BLOCK]


_BLOBS: OrderedDict[str, _Blob] = OrderedDict()


def blob(url: str) -> _Blob:
    """The shared state of ``url``, opened once per process (detection and readers reuse it)."""
    if url not in _BLOBS:
        _BLOBS[url] = _Blob(url)
        while len(_BLOBS) > 64:
            _BLOBS.popitem(last=False)[1].close()
    _BLOBS.move_to_end(url)
    return _BLOBS[url]


def prefetch(urls: Sequence[str]) -> None:
    """Open several URLs at once (each one's size and head), e.g. every shard of an index."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [u for u in dict.fromkeys(urls) if u not in _BLOBS and not cached_path(u)]
    if len(todo) < 2:
        return
    with ThreadPoolExecutor(PARALLEL) as pool:
        opened = list(pool.map(_try_open, todo))
    for url, b in zip(todo, opened):
        if b is not None:
            _BLOBS[url] = b


def _try_open(url: str) -> _Blob | None:
    try:
        return _Blob(url)
    except Exception:  # the reader opens it again and reports the error in its place
        return None


def clear() -> None:
    """Forget every remote file's size and blocks (a test serving new bytes at an old URL)."""
    for b in _BLOBS.values():
        b.close()
    _BLOBS.clear()
    clear_commits()
    src.S3_FS.clear()


class RemoteFile(io.RawIOBase):
    """A seekable, read-only file over a URL's blocks (no ``fileno``: nothing maps it)."""

    remote = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self._blob = blob(url)
        self.name = url
        self.size = self._blob.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def prefetch_windows(self, spans: Sequence[tuple[int, int]]) -> None:
        """See ``_Blob.prefetch_windows``."""
        self._blob.prefetch_windows(spans)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        data = self._blob.read(self._pos, end)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)


def open_url(url: str) -> io.RawIOBase:
    """Open ``url`` for reading: its Hugging Face cache copy when there is one, else by ranges.

    Raises:
        CkptError: the extra is missing, or the URL is missing, forbidden, slow or cut short.
    """
    local = cached_path(url)
    return open(local, "rb", buffering=0) if local else RemoteFile(url)


def fetch_ranges(url: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Several byte ranges of ``url``, fetched concurrently (``PARALLEL`` in flight)."""
    local = cached_path(url)
    if local:
        out = []
        with open(local, "rb") as f:
            for s, e in ranges:
                f.seek(s)
                out.append(f.read(e - s))
        return out
    b = blob(url)
    if all(e - s <= PAGE for s, e in ranges):  # headers: cached, or fetched in one request
        b.prefetch_windows(ranges)
        return [b.read(s, e) for s, e in ranges]
    if all(s // BLOCK in b.blocks and (e - 1) // BLOCK in b.blocks for s, e in ranges):
        return [b.read(s, e) for s, e in ranges]  # already here (a small file, a header block)
    return b.source.fetch(list(ranges))


def stream_ranges(url: str, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
    """``ranges`` of ``url`` in order, fetched ahead (``PARALLEL`` in flight) as they are used."""
    if cached_path(url):
        for r in ranges:  # one at a time: the caller holds one range, not the whole list
            yield from fetch_ranges(url, [r])
        return
    source = blob(url).source
    if hasattr(source, "stream"):
        yield from source.stream(ranges)
        return
    for k in range(0, len(ranges), PARALLEL):
        yield from source.fetch(ranges[k:k + PARALLEL])


def read_sequential(url: str, start: int, end: int) -> Iterator[bytes | memoryview]:
    """``[start, end)`` of ``url`` in pieces, for a caller that reads the file front to back
    (convert): an HTTP source keeps the next ranges in flight across calls."""
    source = None if cached_path(url) else blob(url).source
    if source is not None and hasattr(source, "read_ahead"):
        yield from source.read_ahead(start, end)
        return
    step = 2 << 20
    yield from stream_ranges(url, [(s, min(end, s + step)) for s in range(start, end, step)])


def plan_reads(url: str, ranges: Sequence[tuple[int, int]]) -> None:
    """Announce the byte ranges of ``url`` that ``read_sequential`` will be asked for, in that
    order (a writer's tensors): the read-ahead follows them instead of the file's order."""
    source = None if cached_path(url) else blob(url).source
    if source is not None and hasattr(source, "plan"):
        source.plan(ranges)


# ---- folders (s3 only: an HTTP server has no listing) --------------------------------------


def isdir(url: str) -> bool:
    if not url.startswith("s3://"):
        return False
    (s3fs,) = src.require(url, "s3fs")
    try:
        return bool(src.s3_filesystem(s3fs).isdir(url[5:]))
    except Exception as e:
        raise src.S3(url).error(e) from e


def listdir(url: str) -> list[str]:
    if not isdir(url):
        return []
    (s3fs,) = src.require(url, "s3fs")
    return sorted(posixpath.basename(p.rstrip("/")) for p in src.s3_filesystem(s3fs).ls(url[5:], detail=False))


def exists(url: str) -> bool:
    try:
        return isdir(url) or getsize(url) >= 0
    except CheckpointNotFoundError:
        return False


def isfile(url: str) -> bool:
    return not isdir(url) and exists(url)


def getsize(url: str) -> int:
    local = cached_path(url)
    return os.path.getsize(local) if local else blob(url).size


def check_readable(url: str) -> None:
    """Raise the one-line error for a URL that cannot be read (404, 401/403, timeout, empty)."""
    if isdir(url):
        return
    if getsize(url) == 0:
        if url.startswith(("http://", "https://")):
            # a server answers a folder's URL with an empty redirect to "url/" (http.server, nginx)
            raise CorruptCheckpointError(
                f"{url}: the server sent nothing (an empty file, or a folder: HTTP has no listing, "
                "so folders work over s3:// only); pass the URL of a checkpoint file")
        raise CorruptCheckpointError(f"{url}: empty file; it holds no checkpoint")


class RemoteBytes:
    """A read-only ``bytes``-like view of a URL (``len``, indexing, slicing, bounded ``find``)
    for code written against an mmap: only the blocks it touches are fetched."""

    remote = True  # scanners prefetch the windows they will read record by record

    def __init__(self, url: str) -> None:
        self._blob = blob(url)
        self._size = self._blob.size
        self._at, self._block = 0, b""  # the window of the last indexed byte

    def prefetch_windows(self, spans: Sequence[tuple[int, int]]) -> None:
        """See ``_Blob.prefetch_windows``."""
        self._blob.prefetch_windows(spans)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._size)
            data = self._blob.read(start, stop) if stop > start else b""
            return data if step == 1 else data[::step]
        if i < 0:
            i += self._size
        if not 0 <= i < self._size:
            raise IndexError(i)
        if not self._at <= i < self._at + len(self._block):
            # a cached block, a fetched window, else a page: a few opcodes at each record's
            # start must not fetch a block (and its read-ahead) per record
            found = None if i // BLOCK in self._blob.blocks else self._blob.window(i, i + 1)
            if found is not None:
                self._at, self._block = found
            else:
                step = BLOCK if i // BLOCK in self._blob.blocks else PAGE
                self._at = i - i % step
                self._block = self._blob.read(self._at, min(self._size, self._at + step))
        return self._block[i - self._at]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = self._size if end is None else min(end, self._size)
        pos = start
        while pos < end:
            stop = min(end, pos + 4 * BLOCK)
            at = self._blob.read(pos, stop).find(sub)
            if at >= 0:
                return pos + at
            if stop == end:
                return -1
            pos = stop - len(sub) + 1
        return -1
