"""Where an ``http(s)://`` (or resolved ``hf://``) URL's bytes come from: ranged GETs over
fsspec's HTTP session (aiohttp), several in flight; for a plain ``http(s)://`` URL the lone
metadata reads and the read-ahead of a file read front to back go over the standard library
(``remote_light``; docs/remote.md says why). Also: a whole download for a server without
``Range`` (``Spill``), and an ``hf://`` file's copy in the local Hugging Face cache.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

from ckpttools.errors import CkptError, UnreadableCheckpointError
from ckpttools.formats import remote_sources as src
from ckpttools.formats.remote_sources import (COUNTERS, LIGHT_MAX, PARALLEL, SETTINGS, _http_target,
                                              _no_range, _status_error, _timeout_error, _truncated,
                                              parse_hf, require, require_installed)

_COMMIT = re.compile(r"[0-9a-f]{40}")


class Http:
    """Ranged GETs over fsspec's HTTP session (aiohttp), several in flight; the lone small
    reads of a plain ``http(s)://`` URL over ``remote_light.LightHttp`` (see there why)."""

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
            from ckpttools.formats.remote_light import LightHttp

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
                client_kwargs={"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)})
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

            self._ahead = ReadAhead(self.size, src.AHEAD_BLOCK, PARALLEL, self._submit_ahead,
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
        """The threads that read a plain http(s) file ahead (``remote_light.LightPool``)."""
        if self._light_pool is None:
            from ckpttools.formats.remote_light import LightPool

            self._light_pool = LightPool(self.http, self.headers, SETTINGS.timeout, PARALLEL,
                                         self.light_errors)
        return self._light_pool

    def _reader(self, start: int, end: int) -> Any:
        """What a pool thread does with the answer to ``[start, end)``: its body, checked."""
        from ckpttools.formats.remote_light import read_into

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
        from ckpttools.formats.remote_light import read_multi
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


# ---- hf:// files in the local Hugging Face cache -----------------------------------------


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
