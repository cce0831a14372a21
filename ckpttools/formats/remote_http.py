"""The few small reads a metadata command makes of an ``http(s)://`` URL (the file's head, its
tail, one multi-range request for the zip's local headers), over one kept-alive connection
of the standard library's ``http.client``.

Why not fsspec here: importing aiohttp and fsspec and starting fsspec's event-loop thread
cost about 0.25 s, more than reading a safetensors header from a nearby server; a command
that inspects a file makes one to three requests, one after the other, and needs none of
that. Everything else (ranges in flight together, streams, downloads, ``s3://`` and
``hf://``) goes through fsspec, imported when first needed.
"""

from __future__ import annotations

import base64
import http.client
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from ckpttools.formats import remote_multi

Span = tuple[int, int]


class LightHttp:
    """Blocking ranged GETs over one connection; each call maps failures to one-line errors
    with the callables it is given (the same ones the fsspec path uses)."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self.headers = {**headers, "Accept-Encoding": "identity"}
        if parts.username is not None and "Authorization" not in headers:
            user = urllib.parse.unquote(parts.username)
            word = urllib.parse.unquote(parts.password or "")
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{word}".encode()).decode()
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                import ssl

                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def get(self, range_header: str, use: Callable[[http.client.HTTPResponse], Any]) -> Any:
        """Send one GET with ``Range: range_header`` and hand the response to ``use`` (which
        reads its body or not; an unread body closes the connection)."""
        with self._lock:
            for attempt in (0, 1):
                conn = self._connection()
                try:
                    conn.request("GET", self.target, headers={**self.headers, "Range": range_header})
                    r = conn.getresponse()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    self.close()  # a kept-alive connection the server closed: once more, anew
                    if attempt:
                        raise
                    continue
                except BaseException:
                    self.close()
                    raise
                try:
                    return use(r)
                finally:
                    if not r.isclosed():
                        self.close()
        raise AssertionError("unreachable")


def read_multi(r: http.client.HTTPResponse, spans: Sequence[Span], counters: Any,
               status_error: Callable[[int], Exception | None]) -> list[bytes | None] | None:
    """A multi-range answer's windows, or None when the server did not answer in parts (the
    body of a whole-file or over-wide answer is never read: the connection is dropped)."""
    err = None if r.status == 416 else status_error(r.status)
    if err is not None:
        raise err
    limit = remote_multi.answer_limit(spans)
    if r.status != 206 or int(r.headers.get("Content-Length", 0)) > limit:
        return None
    body = r.read(limit + 1)
    counters.bytes += len(body)
    if len(body) > limit or not r.isclosed() and r.read(1):
        return None
    try:
        return remote_multi.pick(spans, remote_multi.parse_parts(
            r.headers.get("Content-Type", ""), r.headers.get("Content-Range"), body))
    except remote_multi.NotMultipart:
        return None
