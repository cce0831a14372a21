"""Checkpoints behind URLs, read by byte ranges through fsspec (imported only for a URL).

``http(s)://`` goes through fsspec's ``HTTPFileSystem`` session (aiohttp), ``hf://ORG/REPO[@REV]/PATH``
is resolved with ``huggingface_hub`` (``HF_ENDPOINT``, the token from ``HF_TOKEN`` or the login,
the local cache for a commit revision) to its ``/resolve/`` URL, and ``s3://BUCKET/KEY`` goes
through ``s3fs`` (endpoint and credentials from the usual AWS settings).

A URL opens as ``RemoteFile``: reads are served from aligned blocks fetched by one ranged GET per
contiguous run of missing blocks (plus one block read ahead), so listing a torch zip is its head,
its tail and its pickle; reads of tensor data skip the cache. ``fetch_ranges`` fetches several
ranges concurrently for commands that need values.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import os
import posixpath
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckpttools.errors import (CheckpointNotFoundError, CorruptCheckpointError, UnreadableCheckpointError,
                              UnsupportedError)

BLOCK = 128 * 1024
DIRECT = 4 * 2**20  # reads at least this long (tensor data) are fetched as they are, uncached
CACHE_LIMIT = 64 * 2**20  # block cache per file
PARALLEL = 4  # ranges in flight at once
INSTALL = "pip install 'ckpttools[remote]'"
_HF_URL = re.compile(r"hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<file>.+)")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Settings:
    """Process-wide settings the CLI sets from its options."""

    timeout: float = 60.0


@dataclass
class Counters:
    """Requests sent and body bytes received since the last ``reset``."""

    requests: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.requests = self.bytes = 0


SETTINGS = Settings()
COUNTERS = Counters()


def _require(url: str, *modules: str) -> list[Any]:
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        raise UnsupportedError(f"{url}: reading URLs needs the remote extra ({e.name} is missing); "
                               f"{INSTALL}") from e


# ---- where a URL's bytes come from ----------------------------------------------------------


@dataclass(frozen=True)
class HfFile:
    """A file of a Hugging Face repository."""

    repo: str
    revision: str
    filename: str


def parse_hf(url: str) -> HfFile:
    """Split ``hf://ORG/REPO[@REV]/PATH``.

    Raises:
        UnsupportedError: the URL does not have that shape.
    """
    m = _HF_URL.fullmatch(url)
    if m is None:
        raise UnsupportedError(f"{url}: not an hf:// URL of the form hf://ORG/REPO[@REVISION]/PATH; "
                               "name the file, e.g. hf://org/model/model.safetensors")
    return HfFile(m["repo"], m["rev"] or "main", m["file"])


def cached_path(url: str) -> str | None:
    """The local copy of an ``hf://`` file in the Hugging Face cache, when its revision is a
    commit hash (a branch may have moved since) or ``HF_HUB_OFFLINE`` is set; else None."""
    if not url.startswith("hf://"):
        return None
    ref = parse_hf(url)
    if not (_COMMIT.fullmatch(ref.revision) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")):
        return None
    (hub,) = _require(url, "huggingface_hub")
    found = hub.try_to_load_from_cache(ref.repo, ref.filename, revision=ref.revision,
                                       cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _http_target(url: str) -> tuple[str, dict[str, str]]:
    """The HTTP URL and headers that fetch ``url`` (hf:// resolved as huggingface_hub does)."""
    if not url.startswith("hf://"):
        token = os.environ.get("CKPTTOOLS_HTTP_TOKEN")
        return url, ({"Authorization": f"Bearer {token}"} if token else {})
    ref = parse_hf(url)
    (hub,) = _require(url, "huggingface_hub")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    http = hub.hf_hub_url(ref.repo, ref.filename, revision=ref.revision, endpoint=endpoint)
    token = hub.get_token()
    return http, ({"Authorization": f"Bearer {token}"} if token else {})


def _auth_hint(url: str) -> str:
    if url.startswith("hf://"):
        return "set HF_TOKEN or run `hf auth login` with a token that can read the repository"
    if url.startswith("s3://"):
        return "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for the bucket"
    return "set CKPTTOOLS_HTTP_TOKEN (sent as a Bearer token) or put user:password in the URL"


def _status_error(url: str, status: int) -> Exception | None:
    if status == 404:
        return CheckpointNotFoundError(f"{url}: not found (HTTP 404); check the URL, repository and revision")
    if status in (401, 403):
        return UnreadableCheckpointError(f"{url}: access denied (HTTP {status}); {_auth_hint(url)}")
    if status >= 400:
        return UnreadableCheckpointError(f"{url}: the server answered HTTP {status}; retry later "
                                         "or check the URL")
    return None


def _timeout_error(url: str) -> Exception:
    return UnreadableCheckpointError(f"{url}: no answer within {SETTINGS.timeout:g} s; check the "
                                     "server or raise --timeout")


def _truncated(url: str, got: int | None = None, want: int | None = None) -> Exception:
    where = f" after {got} of {want} bytes" if got is not None else " early"
    return UnreadableCheckpointError(f"{url}: the response ended{where} (truncated transfer); "
                                     "retry, or check the server")


def _no_range(url: str) -> Exception:
    return UnsupportedError(f"{url}: the server ignores Range requests (it sent the whole file); "
                            "download the file and pass the local path")


class _Http:
    """Ranged GETs over fsspec's HTTP session (aiohttp), several in flight."""

    def __init__(self, url: str) -> None:
        fsspec_http, aiohttp = _require(url, "fsspec.implementations.http", "aiohttp")
        self.url = url
        self.http, self.headers = _http_target(url)
        t = SETTINGS.timeout
        self._aiohttp = aiohttp
        self._fs = fsspec_http.HTTPFileSystem(
            client_kwargs={"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)})
        self.size = -1

    async def _get(self, start: int, end: int, probe: bool = False) -> bytes:
        session = await self._fs.set_session()
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        COUNTERS.requests += 1
        async with session.get(self.http, headers=headers) as r:
            err = _status_error(self.url, r.status)
            if err is not None:
                raise err
            if probe:
                self.size = _total_size(r)
                end = min(end, self.size)
            if r.status != 206 and (start > 0 or end < self.size):
                raise _no_range(self.url)
            data = await r.content.read(end - start) if r.status != 206 else await r.read()
            COUNTERS.bytes += len(data)
        if len(data) != end - start:
            raise _truncated(self.url, len(data), end - start)
        return data

    def run(self, coro: Any) -> Any:
        from fsspec.asyn import sync

        try:
            return sync(self._fs.loop, lambda: coro)
        except (asyncio.TimeoutError, TimeoutError) as e:
            raise _timeout_error(self.url) from e
        except self._aiohttp.ClientPayloadError as e:
            raise _truncated(self.url) from e
        except self._aiohttp.ClientError as e:
            raise UnreadableCheckpointError(f"{self.url}: cannot fetch ({e}); check the URL and "
                                            "the network") from e

    def probe(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer for a smaller file); learns the size on the way."""
        return self.run(self._get(0, n, probe=True))

    def fetch(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        async def many() -> list[bytes]:
            gate = asyncio.Semaphore(PARALLEL)

            async def one(start: int, end: int) -> bytes:
                async with gate:
                    return await self._get(start, end)

            return list(await asyncio.gather(*(one(s, e) for s, e in ranges)))

        return self.run(many())


def _total_size(r: Any) -> int:
    content_range = r.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    return int(r.headers.get("Content-Length", 0))


class _S3:
    """Ranges through s3fs (``cat_ranges`` runs them concurrently)."""

    def __init__(self, url: str) -> None:
        (s3fs,) = _require(url, "s3fs")
        self.url = url
        self.fs = _s3fs(s3fs)
        self.path = url[len("s3://"):]
        self.size = -1

    def _map(self, e: Exception) -> Exception:
        if isinstance(e, FileNotFoundError):
            return CheckpointNotFoundError(f"{self.url}: no such object; check the bucket and key")
        if isinstance(e, PermissionError):
            return UnreadableCheckpointError(f"{self.url}: access denied; {_auth_hint(self.url)}")
        if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
            return _timeout_error(self.url)
        return UnreadableCheckpointError(f"{self.url}: cannot read ({e}); check the URL and credentials")

    def probe(self, n: int) -> bytes:
        try:
            COUNTERS.requests += 1
            self.size = int(self.fs.info(self.path)["size"])
        except Exception as e:  # s3fs raises many kinds (botocore, aiohttp, OSError)
            raise self._map(e) from e
        return self.fetch([(0, min(n, self.size))])[0] if self.size else b""

    def fetch(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        try:
            COUNTERS.requests += len(ranges)
            out = self.fs.cat_ranges([self.path] * len(ranges), [s for s, _ in ranges],
                                     [e for _, e in ranges], on_error="raise")
        except Exception as e:
            raise self._map(e) from e
        for (s, e), data in zip(ranges, out):
            COUNTERS.bytes += len(data)
            if len(data) != e - s:
                raise _truncated(self.url, len(data), e - s)
        return list(out)


_S3_FS: dict[float, Any] = {}


def _s3fs(s3fs: Any) -> Any:
    t = SETTINGS.timeout
    if t not in _S3_FS:
        _S3_FS[t] = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                                      config_kwargs={"connect_timeout": t, "read_timeout": t,
                                                     "retries": {"max_attempts": 1}})
    return _S3_FS[t]


# ---- one remote file: size, blocks, reads --------------------------------------------------


class _Blob:
    """What is known of one URL: its size and the blocks fetched so far (LRU, bounded)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.source: Any = _S3(url) if url.startswith("s3://") else _Http(url)
        head = self.source.probe(2 * BLOCK)
        self.size: int = self.source.size
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        for i in range(0, len(head), BLOCK):
            if len(head[i:i + BLOCK]) == BLOCK or i + BLOCK >= self.size:
                self.blocks[i // BLOCK] = head[i:i + BLOCK]

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if end <= start:
            return b""
        if end - start >= DIRECT:
            return self.source.fetch([(start, end)])[0]
        first, last = start // BLOCK, (end - 1) // BLOCK
        missing = [b for b in range(first, last + 1) if b not in self.blocks]
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
            _BLOBS.popitem(last=False)
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
    _BLOBS.clear()
    _S3_FS.clear()


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
    if all(s // BLOCK in b.blocks and (e - 1) // BLOCK in b.blocks for s, e in ranges):
        return [b.read(s, e) for s, e in ranges]  # already here (a small file, a header block)
    return b.source.fetch(list(ranges))


# ---- folders (s3 only: an HTTP server has no listing) --------------------------------------


def isdir(url: str) -> bool:
    if not url.startswith("s3://"):
        return False
    (s3fs,) = _require(url, "s3fs")
    try:
        return bool(_s3fs(s3fs).isdir(url[5:]))
    except Exception as e:
        raise _S3(url)._map(e) from e


def listdir(url: str) -> list[str]:
    if not isdir(url):
        return []
    (s3fs,) = _require(url, "s3fs")
    return sorted(posixpath.basename(p.rstrip("/")) for p in _s3fs(s3fs).ls(url[5:], detail=False))


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
        raise CorruptCheckpointError(f"{url}: empty file; it holds no checkpoint")


class RemoteBytes:
    """A read-only ``bytes``-like view of a URL (``len``, indexing, slicing, bounded ``find``)
    for code written against an mmap: only the blocks it touches are fetched."""

    remote = True  # scanners read pickles only, not a block per record

    def __init__(self, url: str) -> None:
        self._blob = blob(url)
        self._size = self._blob.size
        self._at, self._block = -1, b""

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
        if i // BLOCK != self._at:
            self._at = i // BLOCK
            self._block = self._blob.read(self._at * BLOCK, (self._at + 1) * BLOCK)
        return self._block[i % BLOCK]

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
