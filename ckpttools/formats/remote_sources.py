"""Where a URL's bytes come from: ranged GETs over fsspec's HTTP session, or s3fs; the one-line
errors for what a server answers. ``remote.py`` builds seekable files on top.

``http(s)://`` goes through fsspec's ``HTTPFileSystem`` session (aiohttp), ``hf://ORG/REPO[@REV]/PATH``
is resolved with ``huggingface_hub`` (``HF_ENDPOINT``, the token from ``HF_TOKEN`` or the login,
the local cache for a commit revision) to its ``/resolve/`` URL, and ``s3://BUCKET/KEY`` goes
through ``s3fs`` (endpoint and credentials from the usual AWS settings).
"""

from __future__ import annotations

import collections
import importlib
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from ckpttools.errors import (CheckpointNotFoundError, CkptError, UnreadableCheckpointError,
                              UnsupportedError)

PARALLEL = 4  # ranges in flight at once
LIGHT_MAX = 1 << 20  # a lone range up to this long goes over the light connection
READ_BUFSIZE = 4 << 20
AHEAD_BLOCK = 8 << 20  # a sequential reader's ranges: fewer requests, measured 1.2x faster than 2 MiB
INSTALL = "pip install 'ckpttools[remote]'"
_HF_URL = re.compile(r"hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<file>.+)")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Settings:
    """Process-wide settings the CLI sets from its options."""

    timeout: float = 60.0
    # a command that reads the whole file anyway (convert) may stream it from a server
    # without Range support into a temporary file instead of refusing
    whole_file_ok: bool = False


@dataclass
class Counters:
    """Requests sent and body bytes received since the last ``reset``."""

    requests: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.requests = self.bytes = 0


SETTINGS = Settings()
COUNTERS = Counters()


def require(url: str, *modules: str) -> list[Any]:
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        raise UnsupportedError(f"{url}: reading URLs needs the remote extra ({e.name} is missing); "
                               f"{INSTALL}") from e


def require_installed(url: str, *modules: str) -> None:
    """``require`` without importing: the extra is there, to be imported when first needed."""
    import importlib.util

    for m in modules:
        try:
            missing = m in sys.modules and sys.modules[m] is None or importlib.util.find_spec(m) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            raise UnsupportedError(f"{url}: reading URLs needs the remote extra ({m} is missing); "
                                   f"{INSTALL}")


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
    """The local copy of an ``hf://`` file in the Hugging Face cache at the same revision, else
    None. A commit hash is looked up as it is; a branch or tag resolves to the commit the cache
    recorded for it, which is used when the server still names that commit (one ``HEAD``, as
    ``hf_hub_download`` asks) or ``HF_HUB_OFFLINE`` is set."""
    if not url.startswith("hf://"):
        return None
    ref = parse_hf(url)
    (hub,) = require(url, "huggingface_hub")
    found = hub.try_to_load_from_cache(ref.repo, ref.filename, revision=ref.revision,
                                       cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    if not (isinstance(found, str) and os.path.isfile(found)):
        return None
    if _COMMIT.fullmatch(ref.revision) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true"):
        return found
    commit = found.replace(os.sep, "/").split("/snapshots/", 1)[-1].split("/", 1)[0]
    return found if server_commit(url) == commit else None


_SERVER_COMMITS: dict[str, str | None] = {}


def clear_commits() -> None:
    _SERVER_COMMITS.clear()


def server_commit(url: str) -> str | None:
    """The commit the Hub names for an ``hf://`` file now (its ``X-Repo-Commit``), asked once."""
    if url not in _SERVER_COMMITS:
        _SERVER_COMMITS[url] = Http(url).commit()
    return _SERVER_COMMITS[url]


def _http_target(url: str) -> tuple[str, dict[str, str]]:
    """The HTTP URL and headers that fetch ``url`` (hf:// resolved as huggingface_hub does)."""
    if not url.startswith("hf://"):
        token = os.environ.get("CKPTTOOLS_HTTP_TOKEN")
        return url, ({"Authorization": f"Bearer {token}"} if token else {})
    ref = parse_hf(url)
    (hub,) = require(url, "huggingface_hub")
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


class NoRangeError(UnsupportedError):
    """The server answers a ranged request with the whole file."""


def _no_range(url: str) -> Exception:
    return NoRangeError(f"{url}: the server ignores Range requests (it sent the whole file); "
                            "download the file and pass the local path")


class Http:
    """Ranged GETs over fsspec's HTTP session (aiohttp), several in flight; the lone small
    reads of a plain ``http(s)://`` URL over ``remote_http.LightHttp`` (see there why)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http, self.headers = _http_target(url)
        self._fs_: Any = None
        self._light: Any = None
        self._light_pool: Any = None
        self._count = threading.Lock()
        if url.startswith("hf://"):
            self._load()
        else:
            from ckpttools.formats.remote_http import LightHttp

            require_installed(url, "fsspec", "aiohttp")
            self._light = LightHttp(self.http, self.headers, SETTINGS.timeout)
        self.size = -1
        self._ahead: Any = None  # a ReadAhead once the file is read front to back
        self.multi_range: bool | None = None  # False once the server answers one without parts

    def _load(self) -> Any:
        """fsspec's HTTP file system, made on first use (importing aiohttp takes 0.15 s)."""
        if self._fs_ is None:
            fsspec_http, aiohttp = require(self.url, "fsspec.implementations.http", "aiohttp")
            t = SETTINGS.timeout
            self._aiohttp = aiohttp
            self._fs_ = fsspec_http.HTTPFileSystem(
                client_kwargs={"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t),
                               "read_bufsize": READ_BUFSIZE})
        return self._fs_

    @property
    def _fs(self) -> Any:
        return self._load()

    def _answer(self, status: int, r: Any, start: int, end: int, probe: bool) -> int:
        """Check a ranged answer's status (learning the size from a probe); its body's end."""
        err = _status_error(self.url, status)
        if err is not None:
            raise err
        if probe:
            self.size = _total_size(r)
            end = min(end, self.size)
        if status != 206 and (start > 0 or end < self.size):
            raise _no_range(self.url)
        return end

    async def _get(self, start: int, end: int, probe: bool = False) -> bytes:
        session = await self._fs.set_session()
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        COUNTERS.requests += 1
        async with session.get(self.http, headers=headers) as r:
            end = self._answer(r.status, r, start, end, probe)
            data = await r.content.read(end - start) if r.status != 206 else await r.read()
            COUNTERS.bytes += len(data)
        if len(data) != end - start:
            raise _truncated(self.url, len(data), end - start)
        return data

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
        if self._light_pool is not None:
            self._light_pool.close()
        if self._light is not None:
            self._light.close()

    def _light_get(self, start: int, end: int, probe: bool = False) -> bytes:
        """``_get`` over the light connection (an unread body closes it, never read)."""

        def use(r: Any) -> bytes:
            stop = self._answer(r.status, r, start, end, probe)
            data = r.read(stop - start)
            COUNTERS.bytes += len(data)
            if len(data) != stop - start:
                raise _truncated(self.url, len(data), stop - start)
            return bytes(data)

        COUNTERS.requests += 1
        with self.light_errors():
            return self._light.get(f"bytes={start}-{end - 1}", use)  # type: ignore[no-any-return]

    @contextmanager
    def light_errors(self) -> Iterator[None]:
        """``http.client``'s and the socket's errors as the one-line errors."""
        import http.client

        try:
            yield
        except CkptError:
            raise
        except TimeoutError as e:
            raise _timeout_error(self.url) from e
        except http.client.IncompleteRead as e:
            raise _truncated(self.url) from e
        except (OSError, http.client.HTTPException) as e:
            raise UnreadableCheckpointError(f"{self.url}: cannot fetch ({e}); check the URL and "
                                            "the network") from e

    def run(self, coro: Any) -> Any:
        self._load()
        from fsspec.asyn import sync

        with self.errors():
            return sync(self._fs.loop, lambda: coro)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """aiohttp's and asyncio's errors as the one-line errors."""
        try:
            yield
        except TimeoutError as e:  # asyncio's too, since Python 3.11
            raise _timeout_error(self.url) from e
        except Exception as e:
            aiohttp = sys.modules.get("aiohttp")  # imported once this source used fsspec
            if aiohttp is not None and isinstance(e, aiohttp.ClientPayloadError):
                raise _truncated(self.url) from e
            if aiohttp is not None and isinstance(e, aiohttp.ClientError):
                raise UnreadableCheckpointError(f"{self.url}: cannot fetch ({e}); check the URL "
                                                "and the network") from e
            raise

    def commit(self) -> str | None:
        """The ``X-Repo-Commit`` a ``HEAD`` of the file answers (before any redirect)."""

        async def head() -> str | None:
            session = await self._fs.set_session()
            COUNTERS.requests += 1
            async with session.head(self.http, headers=self.headers, allow_redirects=False) as r:
                err = _status_error(self.url, r.status)
                if err is not None:
                    raise err
                return r.headers.get("X-Repo-Commit")

        return self.run(head())

    def probe(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer for a smaller file); learns the size on the way."""
        if self._light is not None:
            return self._light_get(0, n, probe=True)
        return self.run(self._get(0, n, probe=True))

    def stream(self, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        """The ranges in order, ``PARALLEL`` always in flight (a window, not batches: the
        next ranges arrive while the caller writes this one)."""
        import asyncio
        import concurrent.futures

        loop = self._fs.loop
        todo = iter(ranges)
        window: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()

        def submit() -> None:
            nxt = next(todo, None)
            if nxt is not None:
                window.append(asyncio.run_coroutine_threadsafe(self._get(*nxt), loop))

        for _ in range(PARALLEL):
            submit()
        try:
            while window:
                with self.errors():
                    data = window.popleft().result(timeout=None)
                submit()
                yield data
        finally:
            for f in window:
                f.cancel()

    def read_ahead(self, start: int, end: int) -> Iterator[memoryview]:
        """``[start, end)`` in pieces from ``AHEAD_BLOCK`` ranges kept ``PARALLEL`` in flight
        (``remote_ahead.ReadAhead``): in file order past the last read, or in the order a
        writer announced with ``plan``."""
        yield from self._reader_ahead().read(start, end)

    def plan(self, ranges: Sequence[tuple[int, int]]) -> None:
        """The ranges a writer reads next through ``read_ahead``, in its order."""
        self._reader_ahead().plan(ranges)

    def covers(self, start: int, end: int) -> bool:
        """Whether a read at ``start`` is one a ``plan`` announced (and is not done yet)."""
        return self._ahead is not None and self._ahead.covers(start)

    def _reader_ahead(self) -> Any:
        if self._ahead is None:
            from ckpttools.formats.remote_ahead import ReadAhead

            self._ahead = ReadAhead(self.size, AHEAD_BLOCK, PARALLEL, self._submit_ahead,
                                    self._wait_ahead)
        return self._ahead

    def _wait_ahead(self, future: Any) -> Any:
        with self.errors():
            return future.result(timeout=None)

    def _submit_ahead(self, first: int, last: int) -> Any:
        if self._light is not None:
            return self._pool().submit(f"bytes={first}-{last - 1}", self._reader(first, last))
        import asyncio

        return asyncio.run_coroutine_threadsafe(self._get(first, last), self._fs.loop)

    def _pool(self) -> Any:
        """The threads that read a plain http(s) file ahead (``remote_http.LightPool``)."""
        if self._light_pool is None:
            from ckpttools.formats.remote_http import LightPool

            self._light_pool = LightPool(self.http, self.headers, SETTINGS.timeout, PARALLEL,
                                         self.light_errors)
        return self._light_pool

    def _reader(self, start: int, end: int) -> Any:
        """What a pool thread does with the answer to ``[start, end)``: its body, checked."""
        from ckpttools.formats.remote_http import read_into

        def use(r: Any) -> bytearray:
            stop = self._answer(r.status, r, start, end, False)
            data = read_into(r, stop - start)
            with self._count:
                COUNTERS.requests += 1
                COUNTERS.bytes += len(data)
            if len(data) != stop - start:
                raise _truncated(self.url, len(data), stop - start)
            return data

        return use

    def download(self, out: BinaryIO) -> int:
        """Stream the whole file into ``out`` with one GET (a server without Range support)."""

        async def whole() -> int:
            session = await self._fs.set_session()
            COUNTERS.requests += 1
            async with session.get(self.http, headers={**self.headers, "Accept-Encoding": "identity"}) as r:
                err = _status_error(self.url, r.status)
                if err is not None:
                    raise err
                want = int(r.headers.get("Content-Length", -1))
                got = 0
                async for piece in r.content.iter_chunked(1 << 20):
                    out.write(piece)
                    got += len(piece)
                    COUNTERS.bytes += len(piece)
            if want >= 0 and got != want:
                raise _truncated(self.url, got, want)
            return got

        return self.run(whole())

    def fetch_multi(self, batches: Sequence[Sequence[tuple[int, int]]]) -> list[list[bytes | None] | None]:
        """Each batch of small ranges by one multi-range GET, ``PARALLEL`` in flight; None for
        a batch the server would not answer in parts (then no more are asked of it)."""
        if len(batches) == 1 and self._light is not None:
            answers = [self._light_multi(batches[0])]
            if answers[0] is None:
                self.multi_range = False
            return answers
        import asyncio

        from ckpttools.formats.remote_multi import get_multi

        async def many() -> list[list[bytes | None] | None]:
            session = await self._fs.set_session()
            gate = asyncio.Semaphore(PARALLEL)

            async def one(spans: Sequence[tuple[int, int]]) -> list[bytes | None] | None:
                async with gate:
                    return await get_multi(session, self.http, self.headers, spans, COUNTERS,
                                           lambda status: _status_error(self.url, status))

            return list(await asyncio.gather(*(one(b) for b in batches)))

        answers = self.run(many())
        if any(a is None for a in answers):
            self.multi_range = False
        return answers

    def _light_multi(self, spans: Sequence[tuple[int, int]]) -> list[bytes | None] | None:
        from ckpttools.formats.remote_http import read_multi
        from ckpttools.formats.remote_multi import range_header

        COUNTERS.requests += 1
        with self.light_errors():
            return self._light.get(range_header(spans), lambda r: read_multi(  # type: ignore[no-any-return]
                r, spans, COUNTERS, lambda status: _status_error(self.url, status)))

    def fetch(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        if len(ranges) == 1 and self._light is not None and ranges[0][1] - ranges[0][0] <= LIGHT_MAX:
            return [self._light_get(*ranges[0])]
        import asyncio

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


class S3:
    """Ranges through s3fs (``cat_ranges`` runs them concurrently)."""

    def __init__(self, url: str) -> None:
        (s3fs,) = require(url, "s3fs")
        self.url = url
        self.fs = s3_filesystem(s3fs)
        self.path = url[len("s3://"):]
        self.size = -1

    def error(self, e: Exception) -> Exception:
        if isinstance(e, FileNotFoundError):
            return CheckpointNotFoundError(f"{self.url}: no such object; check the bucket and key")
        if isinstance(e, PermissionError):
            return UnreadableCheckpointError(f"{self.url}: access denied; {_auth_hint(self.url)}")
        if isinstance(e, TimeoutError):
            return _timeout_error(self.url)
        return UnreadableCheckpointError(f"{self.url}: cannot read ({e}); check the URL and credentials")

    def probe(self, n: int) -> bytes:
        try:
            COUNTERS.requests += 1
            self.size = int(self.fs.info(self.path)["size"])
        except Exception as e:  # s3fs raises many kinds (botocore, aiohttp, OSError)
            raise self.error(e) from e
        return self.fetch([(0, min(n, self.size))])[0] if self.size else b""

    def fetch(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        try:
            COUNTERS.requests += len(ranges)
            out = self.fs.cat_ranges([self.path] * len(ranges), [s for s, _ in ranges],
                                     [e for _, e in ranges], on_error="raise")
        except Exception as e:
            raise self.error(e) from e
        for (s, e), data in zip(ranges, out):
            COUNTERS.bytes += len(data)
            if len(data) != e - s:
                raise _truncated(self.url, len(data), e - s)
        return list(out)


class Spill:
    """A whole file downloaded into a temporary file, served by ranges from there."""

    def __init__(self, url: str, source: Http) -> None:
        import tempfile
        import threading

        self.url = url
        self._file = tempfile.TemporaryFile()  # gone when closed or when the process ends
        self.size = source.download(self._file)
        self._lock = threading.Lock()

    def probe(self, n: int) -> bytes:
        return self.fetch([(0, min(n, self.size))])[0]

    def close(self) -> None:
        self._file.close()

    def fetch(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        out = []
        with self._lock:
            for start, end in ranges:
                self._file.seek(start)
                out.append(self._file.read(end - start))
        return out


S3_FS: dict[float, Any] = {}


def s3_filesystem(s3fs: Any) -> Any:
    t = SETTINGS.timeout
    if t not in S3_FS:
        S3_FS[t] = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                                      config_kwargs={"connect_timeout": t, "read_timeout": t,
                                                     "retries": {"max_attempts": 1}})
    return S3_FS[t]
