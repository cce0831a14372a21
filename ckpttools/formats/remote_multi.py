"""Many small byte ranges of a URL (a zip's local headers) in as few requests as the server
allows: one ``Range: bytes=a-b,c-d,...`` request answered ``206 multipart/byteranges``; else
(a server that answers such a request with the whole file, or with one range too wide to be
worth reading) the response is dropped after its headers and the ranges are fetched singly,
several in flight, neighbours coalesced. s3 has no multi-range GET: there the ranges go
singly from the start.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

MAX_RANGES = 200  # per request: Apache answers 200 at most (MaxRanges); the header stays < 5 KB
GAP = 128  # closer windows go as one range: a multipart part's own headers cost about as much
SINGLE_GAP = 64 * 1024  # fetched one request per range, closer windows share a request
PART_OVERHEAD = 512  # multipart headers per part we accept before calling an answer too wide
_CONTENT_RANGE = re.compile(rb"(?im)^content-range:[ \t]*bytes[ \t]+(\d+)-(\d+)/(?:\d+|\*)[ \t]*\r?$")
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.I)

Span = tuple[int, int]


class NotMultipart(Exception):
    """The server answered a multi-range request with something the caller falls back from."""


def coalesce(spans: Sequence[Span], gap: int) -> list[Span]:
    """``spans`` sorted, overlapping ones and those less than ``gap`` apart merged."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def range_header(spans: Sequence[Span]) -> str:
    return "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in spans)


def answer_limit(spans: Sequence[Span]) -> int:
    """The most body bytes a fair answer to a multi-range request of ``spans`` holds."""
    return sum(e - s for s, e in spans) + PART_OVERHEAD * len(spans) + 4096


def parse_parts(content_type: str, content_range: str | None, body: bytes) -> dict[int, bytes]:
    """The parts of a 206 answer by start offset: each part of a ``multipart/byteranges`` body,
    read by the length its ``Content-Range`` gives (not by searching for the boundary, which
    may occur in the data), or the one range of a plain 206.

    Raises:
        NotMultipart: the body is not what its headers say.
    """
    if not content_type.lower().startswith("multipart/byteranges"):
        m = _CONTENT_RANGE.match(f"content-range: {content_range or ''}".encode("latin-1"))
        if m is None or int(m[2]) - int(m[1]) + 1 != len(body):
            raise NotMultipart("a 206 answer without a usable Content-Range")
        return {int(m[1]): body}
    b = _BOUNDARY.search(content_type)
    if b is None:
        raise NotMultipart("multipart answer without a boundary")
    delim = b"--" + (b[1] or b[2]).encode("latin-1")
    parts: dict[int, bytes] = {}
    pos = body.find(delim)
    while pos >= 0:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            return parts
        head_end = body.find(b"\r\n\r\n", pos)
        m = _CONTENT_RANGE.search(body, pos, head_end) if head_end >= 0 else None
        if m is None:
            raise NotMultipart("a part without Content-Range")
        start, length = int(m[1]), int(m[2]) - int(m[1]) + 1
        data = body[head_end + 4:head_end + 4 + length]
        if len(data) != length:
            raise NotMultipart("a part shorter than its Content-Range")
        parts[start] = data
        pos = body.find(delim, head_end + 4 + length)
    raise NotMultipart("multipart answer without its closing boundary")


def pick(spans: Sequence[Span], parts: dict[int, bytes]) -> list[bytes | None]:
    """Each span's bytes from the parts that hold it (a server may merge or reorder ranges),
    None where no part holds it whole."""
    starts = sorted(parts)
    out: list[bytes | None] = []
    for s, e in spans:
        i = bisect.bisect_right(starts, s) - 1
        lo = starts[i] if i >= 0 else -1
        data = parts.get(lo, b"")
        out.append(data[s - lo:e - lo] if i >= 0 and e <= lo + len(data) else None)
    return out


def in_parts(status: int, headers: Any, spans: Sequence[Span], status_error: Any) -> bool:
    """Whether an answer to a multi-range request of ``spans`` is worth reading: a 206 no wider
    than ``answer_limit`` (a whole file or a wide range is dropped unread, and so is a 416).

    Raises:
        the ``status_error`` of a 4xx/5xx answer other than 416.
    """
    err = None if status == 416 else status_error(status)
    if err is not None:
        raise err
    return status == 206 and int(headers.get("Content-Length", 0)) <= answer_limit(spans)


def windows_of(headers: Any, spans: Sequence[Span], body: bytes) -> list[bytes | None] | None:
    """Each span's bytes from a multi-range answer's body, or None when it does not parse."""
    try:
        return pick(spans, parse_parts(headers.get("Content-Type", ""),
                                       headers.get("Content-Range"), body))
    except NotMultipart:
        return None


def fetch_windows(source: Any, spans: Sequence[Span]) -> list[bytes]:
    """The bytes of each of ``spans`` (small, sorted, disjoint), by multi-range requests where
    ``source`` offers them and they work, else by single ranges with neighbours merged."""
    spans = list(spans)
    got: list[bytes | None] = [None] * len(spans)
    if len(spans) > 1 and getattr(source, "multi_range", None) is not False \
            and hasattr(source, "fetch_multi"):
        batches = [spans[i:i + MAX_RANGES] for i in range(0, len(spans), MAX_RANGES)]
        for k, answer in enumerate(source.fetch_multi(batches)):
            if answer is not None:
                got[k * MAX_RANGES:k * MAX_RANGES + len(answer)] = answer
    todo = [i for i, data in enumerate(got) if data is None]
    if todo:
        merged = coalesce([spans[i] for i in todo], SINGLE_GAP)
        parts = dict(zip((s for s, _ in merged), source.fetch(merged)))
        for i, data in zip(todo, pick([spans[i] for i in todo], parts)):
            got[i] = data
    return [d if d is not None else b"" for d in got]


async def get_multi(session: Any, url: str, headers: dict[str, str], spans: Sequence[Span],
                    counters: Any, status_error: Any) -> list[bytes | None] | None:
    """One multi-range GET of ``spans``: their bytes, or None when the server answers with the
    whole file, a range too wide, 416 or a body that does not parse (the response is closed
    after its headers, its body never read).

    Raises:
        the ``status_error`` of a 4xx/5xx answer other than 416.
    """
    limit = answer_limit(spans)
    counters.requests += 1
    async with session.get(url, headers={**headers, "Range": range_header(spans),
                                         "Accept-Encoding": "identity"}) as r:
        if not in_parts(r.status, r.headers, spans, status_error):
            r.close()  # the whole file or a wide range: drop the connection, read nothing
            return None
        body = bytearray()
        async for piece in r.content.iter_chunked(1 << 16):
            body += piece
            counters.bytes += len(piece)
            if len(body) > limit:
                r.close()
                return None
        want = r.headers.get("Content-Length")
        if want is not None and len(body) != int(want):
            return None  # cut short: the singles that follow report it if it persists
        return windows_of(r.headers, spans, bytes(body))
