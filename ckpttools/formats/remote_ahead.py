"""Reading a remote file ahead of a caller that reads it piece after piece (convert).

Without a plan the window runs in file order: aligned ranges, several in flight past the last
read. A writer that knows the order it will take its tensors in hands it over first
(``plan``): the window then follows that order, so a tensor read out of file order (a view
into a storage read earlier, a tied weight) neither restarts the window nor throws away the
ranges in flight.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Span = tuple[int, int]
MERGE_GAP = 4096  # planned ranges this close in file order share a request (a zip header between)
KEEP_LIMIT = 32 << 20  # bytes of planned ranges kept for their next use (a tied weight), not re-read


def plan_pieces(ranges: Sequence[Span], block: int) -> list[Span]:
    """``ranges`` in the order given, cut into requests of at most ``block`` bytes; a range
    that starts where the previous one ended (give or take ``MERGE_GAP``) continues its
    request."""
    pieces: list[Span] = []
    for start, end in ranges:
        pos = start
        if pieces and 0 <= start - pieces[-1][1] <= MERGE_GAP and pieces[-1][1] - pieces[-1][0] < block:
            first = pieces[-1][0]
            pos = min(end, first + block)
            pieces[-1] = (first, pos)
        while pos < end:
            pieces.append((pos, min(end, pos + block)))
            pos = pieces[-1][1]
    return pieces


class ReadAhead:
    """A window of ``parallel`` ranges in flight, in file order or in a planned order.

    Args:
        size: the file's size.
        block: bytes per request.
        parallel: requests in flight.
        submit: starts fetching ``(first, last)``; returns a future of its bytes.
        wait: turns a future into its bytes (mapping errors).
    """

    def __init__(self, size: int, block: int, parallel: int, submit: Callable[[int, int], Any],
                 wait: Callable[[Any], Any]) -> None:
        self.size, self.block, self.parallel = size, block, parallel
        self._submit, self._wait = submit, wait
        self._window: collections.deque[tuple[int, int, Any]] = collections.deque()
        self._next = 0  # file order: where the next request starts
        self._plan: list[Span] | None = None
        self._planned = 0  # planned order: the index of the next request
        self._uses: collections.Counter[Span] = collections.Counter()  # planned uses still ahead
        self._kept: dict[Span, Any] = {}

    def plan(self, ranges: Sequence[Span]) -> None:
        """The ranges the caller will read next, in its order (replaces any earlier plan)."""
        self.cancel()
        self._plan = plan_pieces(ranges, self.block)
        self._planned = 0
        self._uses = collections.Counter(self._plan)
        self._kept.clear()

    def covers(self, pos: int) -> bool:
        """Whether ``pos`` is in flight or in the part of the plan not read yet."""
        if self._plan is None:
            return False
        return any(a <= pos < b for a, b, _ in self._window) or any(
            a <= pos < b for a, b in self._plan[self._planned:])

    def read(self, start: int, end: int) -> Iterator[memoryview]:
        """``[start, end)`` in pieces, from the window (moved there when it is elsewhere)."""
        pos = start
        while pos < end:
            at = next((i for i, (a, b, _) in enumerate(self._window) if a <= pos < b), None)
            if at is None:
                self._restart(pos)
                at = 0
            for _ in range(at):  # passed over: the caller read past them
                self._window.popleft()[2].cancel()
                self._fill()
            first, last, future = self._window[0]
            data = self._wait(future)
            piece = memoryview(data)[pos - first:min(end, last) - first]  # no copy
            pos += len(piece)
            if pos >= last:
                self._window.popleft()
                self._keep((first, last), data)
                self._fill()
            yield piece

    def _keep(self, span: Span, data: Any) -> None:
        """Hold a planned range's bytes when the plan reads it again (within ``KEEP_LIMIT``)."""
        if self._uses[span] > 0 and sum(map(len, self._kept.values())) + len(data) <= KEEP_LIMIT:
            self._kept[span] = data

    def cancel(self) -> None:
        for _, _, future in self._window:
            future.cancel()
        self._window.clear()

    def _restart(self, pos: int) -> None:
        self.cancel()
        if self._plan is not None:
            lo = max(0, self._planned - self.parallel - 1)  # near where the caller was first
            order = [*range(lo, len(self._plan)), *range(lo)]
            found = next((i for i in order if self._plan[i][0] <= pos < self._plan[i][1]), None)
            if found is None:
                self._plan = None  # the caller left its plan: back to file order
            else:
                self._planned = found
        self._next = pos - pos % self.block
        self._fill()

    def _fill(self) -> None:
        while len(self._window) < self.parallel:
            span = self._next_span()
            if span is None:
                return
            self._window.append((*span, self._kept_future(span) or self._submit(*span)))

    def _kept_future(self, span: Span) -> Any:
        if self._plan is not None:
            self._uses[span] -= 1
        if span not in self._kept:
            return None
        from concurrent.futures import Future

        done: Future[Any] = Future()
        done.set_result(self._kept.pop(span) if self._uses[span] <= 0 else self._kept[span])
        return done

    def _next_span(self) -> Span | None:
        if self._plan is not None:
            if self._planned >= len(self._plan):
                return None
            self._planned += 1
            return self._plan[self._planned - 1]
        if self._next >= self.size:
            return None
        span = (self._next, min(self.size, self._next + self.block))
        self._next = span[1]
        return span
