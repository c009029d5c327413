"""``wsgi.input``: the request body as a file-like object (PEP 3333's input stream).

Three shapes:

- ``EMPTY``: a request without a body (shared: it has no state);
- ``io.BytesIO`` or a spooled temporary file: the body was read before the app ran
  (``wsgi_request_buffering on``, the default): a slow client costs no app time;
- ``StreamingInput``: the app runs at once and reads the body as it arrives
  (``wsgi_request_buffering off``, threaded mode only): reads block the app's thread,
  not the event loop, and reading pauses the client when the app falls behind.

All of them end where the body ends: reading past it returns ``b""``, never blocks.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator


class _EmptyInput:
    __slots__ = ()

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""

    def readlines(self, hint: int = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


EMPTY = _EmptyInput()

# how much a StreamingInput holds before the client is paused
STREAM_LIMIT = 256 * 1024


class StreamingInput:
    """Fed by the event loop (``feed``, ``end``), read by the app's thread."""

    def __init__(self, hold: Callable[[bool], None], timeout: float) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._failed = False
        self._condition = threading.Condition()
        self._hold = hold  # hold(True) pauses the client, hold(False) resumes (thread-safe)
        self._held = False
        self._timeout = timeout

    # -- loop side ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        with self._condition:
            self._chunks.append(data)
            self._buffered += len(data)
            self._condition.notify()
            if self._buffered > STREAM_LIMIT and not self._held:
                self._held = True
                self._hold(True)

    def end(self) -> None:
        with self._condition:
            self._complete = True
            self._condition.notify_all()

    def fail(self) -> None:
        """The client went away: reads end."""
        with self._condition:
            self._failed = True
            self._complete = True
            self._condition.notify_all()

    # -- app side ----------------------------------------------------------------------

    def _take(self, size: int) -> bytes:
        """Up to ``size`` bytes (all with -1), waiting for at least one if none is here."""
        with self._condition:
            while not self._chunks and not self._complete:
                if not self._condition.wait(self._timeout):
                    raise OSError("timed out reading the request body")
            if self._failed:
                raise OSError("the client closed the connection")
            out = []
            taken = 0
            while self._chunks and (size < 0 or taken < size):
                chunk = self._chunks.popleft()
                if size >= 0 and taken + len(chunk) > size:
                    cut = size - taken
                    self._chunks.appendleft(chunk[cut:])
                    chunk = chunk[:cut]
                out.append(chunk)
                taken += len(chunk)
            self._buffered -= taken
            self._release()
            return b"".join(out)

    def _release(self) -> None:
        # (under the lock) the app caught up: let the client send again
        if self._held and self._buffered <= STREAM_LIMIT // 2:
            self._held = False
            self._hold(False)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while True:
                chunk = self._take(-1)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        out = []
        while size > 0:
            chunk = self._take(size)
            if not chunk:
                break
            out.append(chunk)
            size -= len(chunk)
        return b"".join(out)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        line = bytearray()
        with self._condition:
            while limit < 0 or len(line) < limit:
                while not self._chunks and not self._complete:
                    if not self._condition.wait(self._timeout):
                        raise OSError("timed out reading the request body")
                if self._failed:
                    raise OSError("the client closed the connection")
                if not self._chunks:
                    break
                chunk = self._chunks[0]
                want = len(chunk) if limit < 0 else min(len(chunk), limit - len(line))
                newline = chunk.find(b"\n", 0, want)
                if newline >= 0:
                    want = newline + 1
                if want == len(chunk):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[want:]
                line += chunk[:want]
                self._buffered -= want
                if newline >= 0:
                    break
            self._release()
        return bytes(line)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                break
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line
