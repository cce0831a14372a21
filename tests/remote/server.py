"""A range-honouring HTTP file server on 127.0.0.1 for the remote tests and the bench.

It serves the files under a folder, answers ``Range: bytes=a-b`` with 206 and
``Range: bytes=a-b,c-d,...`` with ``206 multipart/byteranges`` (or, on demand, as servers that
do not do multi-range answer it: the whole file, or one range spanning them all), maps the Hub's
``/{org}/{repo}/resolve/{rev}/{path}`` onto ``{org}/{repo}/{path}``, counts requests and body
bytes, and misbehaves on demand: ignore ranges, answer a status, cut the body short, stall.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_MULTI = re.compile(r"bytes=\d+-\d+(?:,\s*\d+-\d+)+")
BOUNDARY = "CKPTTOOLS-TEST-BOUNDARY"


@dataclass
class Behaviour:
    """What the server does wrong, set by a test."""

    no_range: bool = False
    status: int | None = None  # answer every request with this status
    truncate: bool = False  # send half the promised body, then close
    stall: float = 0.0  # seconds to wait before answering
    token: str | None = None  # 401 unless ``Authorization: Bearer <token>``
    commit: str = "f" * 40  # the X-Repo-Commit a /resolve/ path answers with
    multi: str = "parts"  # a multi-range request: "parts", "whole" (200) or "span" (one range)


@dataclass
class Log:
    """Requests seen (method, path, Range header) and body bytes sent."""

    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    bytes: int = 0
    active: int = 0  # requests being answered now
    most_active: int = 0  # the most answered at once since the last reset

    def reset(self) -> None:
        self.requests.clear()
        self.bytes = 0
        self.most_active = 0


class _Handler(BaseHTTPRequestHandler):
    server: FileServer
    protocol_version = "HTTP/1.1"
    # as nginx's tcp_nodelay: a small body written after the headers on a kept-alive connection
    # would otherwise wait for the client's delayed ACK (40 ms) under Nagle's algorithm
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _file(self) -> Path | None:
        path = self.path.split("?", 1)[0]
        m = _RESOLVE.fullmatch(path)
        rel = f"{m['repo']}/{m['file']}" if m else path.lstrip("/")
        full = (self.server.root / rel).resolve()
        return full if full.is_file() and self.server.root in full.parents else None

    def _fail(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, body: bool) -> None:
        srv = self.server
        with srv.lock:
            srv.log.requests.append((self.command, self.path, self.headers.get("Range")))
            srv.log.active += 1
            srv.log.most_active = max(srv.log.most_active, srv.log.active)
        try:
            self._answer(body)
        finally:
            with srv.lock:
                srv.log.active -= 1

    def _answer(self, body: bool) -> None:
        how = self.server.behaviour
        if how.stall:
            time.sleep(how.stall)
        if how.status:
            return self._fail(how.status)
        if how.token and self.headers.get("Authorization") != f"Bearer {how.token}":
            return self._fail(401)
        f = self._file()
        if f is None:
            return self._fail(404)
        size = f.stat().st_size
        if _MULTI.fullmatch(self.headers.get("Range") or "") and not how.no_range:
            return self._multi(f, size, body)
        start, end = 0, size
        m = _RANGE.fullmatch(self.headers.get("Range") or "")
        ranged = m is not None and not how.no_range
        if ranged:
            start, end = int(m[1]), min(size, int(m[2]) + 1 if m[2] else size)
        self.send_response(206 if ranged else 200)
        if _RESOLVE.fullmatch(self.path.split("?", 1)[0]):
            self.send_header("X-Repo-Commit", how.commit)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "none" if how.no_range else "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if body:
            self._send(f, start, end if not how.truncate else start + (end - start) // 2)
        if how.truncate:
            self.close_connection = True

    def _multi(self, f: Path, size: int, body: bool) -> None:
        spans = [(int(a), min(size, int(b) + 1)) for a, b in
                 (r.strip().split("-") for r in self.headers["Range"][6:].split(","))]
        how = self.server.behaviour.multi
        if how == "whole":
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            return self._send(f, 0, size) if body else None
        if how == "span":
            start, end = min(s for s, _ in spans), max(e for _, e in spans)
            self.send_response(206)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            return self._send(f, start, end) if body else None
        out = bytearray()
        with open(f, "rb") as fh:
            for s, e in spans:
                fh.seek(s)
                out += (f"\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Range: bytes {s}-{e - 1}/{size}\r\n\r\n").encode() + fh.read(e - s)
        out += f"\r\n--{BOUNDARY}--\r\n".encode()
        self.send_response(206)
        self.send_header("Content-Type", f"multipart/byteranges; boundary={BOUNDARY}")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if body:
            self.wfile.write(out)
            with self.server.lock:
                self.server.log.bytes += len(out)

    def _send(self, f: Path, start: int, end: int) -> None:
        with open(f, "rb") as fh:
            fh.seek(start)
            left = end - start
            try:
                while left > 0:
                    chunk = fh.read(min(left, 1 << 20))
                    self.wfile.write(chunk)
                    left -= len(chunk)
                    with self.server.lock:
                        self.server.log.bytes += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (a refused range, a timeout)


class FileServer(ThreadingHTTPServer):
    """Serves ``root`` on 127.0.0.1; ``url(rel)`` is a file's address."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.behaviour = Behaviour()
        self.log = Log()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()


@contextmanager
def serving(handler: Any) -> Iterator[str]:
    """Serve ``handler`` (a request handler class or factory) on 127.0.0.1; yields the base URL."""
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{srv.server_address[1]}"
        finally:
            srv.shutdown()
