"""One call of a WSGI app: PEP 3333's start_response, write and iteration rules.

Theory of operation. The app side of a ``WsgiCall`` calls the app and iterates its
answer: in a pool thread (``run_threaded``) or on the event loop (``run_inline``, for
``wsgi_threads 0``). What it produces goes, as events, to the answer side
(``WsgiAnswer`` in answer.py), which always runs on the event loop and talks to the
connection:

- ``WHOLE`` (body): the answer is complete and known: one write;
- ``HEAD``, then ``DATA`` (bytes)..., then ``END``: a streamed answer;
- ``FILE`` (fd, offset, count): a ``wsgi.file_wrapper`` over a real file, for sendfile;
- ``ERROR`` (traceback text): the app raised.

PEP 3333 rules kept here: headers go out with the first non-empty chunk (until then an
app may call ``start_response`` again with ``exc_info``; after, the exception is
re-raised); hop-by-hop headers from the app are an error; ``write()`` works; the
iterable's ``close()`` is called whatever happens, even when the client went away.

Backpressure, threaded: the app side waits while more than ``BUFFER_LIMIT`` bytes are
handed over but not yet written, or while the client is not reading; so a 1 GB
generator streams in bounded memory. Inline: iteration stops while the client is not
reading and resumes when it drains. A client that went away (``cancelled``) ends the
iteration at the next chunk.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from portico.http.response import encode_headers
from portico.memo import remember

if TYPE_CHECKING:
    from portico.wsgi.answer import WsgiAnswer

WHOLE, HEAD, DATA, END, FILE, ERROR = range(6)

BUFFER_LIMIT = 1024 * 1024
INLINE_SLICE = 256 * 1024
_NOTHING = object()
# RFC 9110: field-name = token
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks; the server sends a real file
    with sendfile instead."""

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.block_size)
        if data:
            return data  # type: ignore[no-any-return]
        raise StopIteration


# What a header pair means once checked: a line sent as is, a header portico writes
# itself (Date, its own framing), or (n >= 0) a Content-Length of n.
_LINE, _OWN, _NOT_A_LENGTH = -1, -2, -3
_OWN_NAMES = frozenset({"date"})
# Pairs checked before (an app sends the same few again and again), bounded.
_CHECKED: dict[tuple[str, str], tuple[bytes, int]] = {}
_CHECKED_MAX = 4096
_CHECKED_LINE_MAX = 512


def check_headers(status: Any, headers: Any) -> tuple[bytes, int | None]:
    """Check ``start_response``'s arguments as PEP 3333 wants (AssertionError, as
    wsgiref's validator raises); return the header lines to send and the app's
    Content-Length (None when it gave none, or not a number)."""
    if (
        not isinstance(status, str)
        or len(status) < 4
        or not status[:3].isdigit()
        or status[3] != " "
    ):
        raise AssertionError(f"invalid status {status!r}: expected a str like '200 OK'")
    if not isinstance(headers, list):
        raise AssertionError("headers must be a list of (name, value) tuples")
    lines = []
    declared: int | None = None
    length_seen = False
    checked = _CHECKED
    for item in headers:
        try:
            known = checked.get(item)
        except TypeError:  # unhashable: not a tuple of two str
            known = None
        if known is None:
            known = _check_header(item)
            if len(known[0]) <= _CHECKED_LINE_MAX:  # long values are rare and vary
                remember(checked, item, known, _CHECKED_MAX)
        line, meaning = known
        if meaning == _LINE:
            lines.append(line)
        elif meaning != _OWN and not length_seen:
            length_seen = True  # the first Content-Length counts
            declared = meaning if meaning >= 0 else None
    return b"".join(lines), declared


def _check_header(item: Any) -> tuple[bytes, int]:
    if (
        not isinstance(item, tuple)
        or len(item) != 2
        or not isinstance(item[0], str)
        or not isinstance(item[1], str)
    ):
        raise AssertionError(f"invalid header {item!r}: expected a (str, str) tuple")
    name, value = item
    lower = name.lower()
    if lower in _HOP_BY_HOP:
        raise AssertionError(f"hop-by-hop header {name!r} is not allowed from an app")
    if _TOKEN.fullmatch(name) is None or "\n" in value or "\r" in value or "\0" in value:
        raise AssertionError(f"invalid header {item!r}")
    if lower == "content-length":
        return b"", int(value) if value.isdigit() else _NOT_A_LENGTH
    if lower in _OWN_NAMES:
        return b"", _OWN
    return encode_headers([(name, value)]), _LINE


class WsgiCall:
    __slots__ = (
        "_condition",
        "answer",
        "app",
        "cancelled",
        "consumed",
        "declared",
        "environ",
        "head_block",
        "head_sent",
        "inline",
        "iterator",
        "paused",
        "produced",
        "result",
        "status",
    )

    def __init__(
        self, app: Callable[..., Any], environ: dict[str, Any], answer: WsgiAnswer, inline: bool
    ) -> None:
        self.app = app
        self.environ = environ
        self.answer = answer
        self.inline = inline
        self.status: str | None = None
        self.head_block = b""  # the app's header lines, as sent
        self.declared: int | None = None  # the app's Content-Length
        self.head_sent = False
        self.cancelled = False
        self.paused = False  # the client is not reading (set by the answer side)
        self.produced = 0  # bytes handed over (written by the app side only)
        self.consumed = 0  # bytes written out (written by the answer side only)
        self.result: Any = None
        self.iterator: Iterator[bytes] | None = None
        self._condition: threading.Condition | None = None

    # -- PEP 3333's callables ------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() was already called")
        self.head_block, self.declared = check_headers(status, headers)
        self.status = status
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write() callable."""
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if not isinstance(data, bytes):
            raise AssertionError("write() takes bytes")
        if data:
            self._data(data)
            if not self.inline:
                self._wait()

    def _data(self, data: bytes) -> None:
        if not self.head_sent:
            self.head_sent = True
            self.answer.event(HEAD, None)
        self.produced += len(data)
        self.answer.event(DATA, data)

    # -- threaded --------------------------------------------------------------------

    def run_threaded(self) -> None:
        """In a pool thread: call the app, hand over the whole answer, close."""
        try:
            if self._start():
                for chunk in self.iterator:  # type: ignore[union-attr]
                    if self.cancelled:
                        break
                    if not isinstance(chunk, bytes):
                        raise AssertionError(f"the app yielded {type(chunk).__name__}, not bytes")
                    if chunk:
                        self._data(chunk)
                        self._wait()
                self._end()
        except BaseException:  # SystemExit from an app must not leave a client waiting
            self._failed()
        finally:
            self._close()

    def _wait(self) -> None:
        """Let the answer side catch up (see the module's Backpressure)."""
        if self.produced - self.consumed <= BUFFER_LIMIT and not self.paused:
            return
        condition = self._condition
        if condition is None:
            condition = self._condition = threading.Condition()
        with condition:
            while not self.cancelled and (
                self.paused or self.produced - self.consumed > BUFFER_LIMIT
            ):
                condition.wait(1.0)

    def wake(self) -> None:
        """Answer side: the app side may go on (more was written, or the client drained)."""
        condition = self._condition
        if condition is not None:
            with condition:
                condition.notify()

    # -- inline ------------------------------------------------------------------------

    def run_inline(self) -> None:
        """On the event loop: call the app, then iterate while the client keeps up."""
        try:
            if self._start():
                self.pump_inline()
                return
        except Exception:
            self._failed()
        self._close()

    def pump_inline(self) -> None:
        # Yields to the loop every INLINE_SLICE bytes: a client that went away is only
        # noticed when the loop runs its connection_lost, and an endless generator
        # must not starve every other connection of the worker meanwhile.
        budget = INLINE_SLICE
        try:
            for chunk in self.iterator:  # type: ignore[union-attr]
                if self.cancelled or self.answer.gone():
                    break
                if not isinstance(chunk, bytes):
                    raise AssertionError(f"the app yielded {type(chunk).__name__}, not bytes")
                if chunk:
                    self._data(chunk)
                    if self.paused:
                        self.answer.when_writable(self.pump_inline)
                        return
                    budget -= len(chunk)
                    if budget <= 0:
                        self.answer.later(self.pump_inline)
                        return
            self._end()
        except Exception:
            self._failed()
        self._close()

    # -- shared ------------------------------------------------------------------------

    def _start(self) -> bool:
        """Call the app. Returns True when chunks remain to be iterated."""
        result = self.result = self.app(self.environ, self.start_response)
        if self.status is None:
            # PEP 3333 lets an app (a generator) call start_response in its first step
            iterator = iter(result)
            first = next(iterator, _NOTHING)
            if self.status is None:
                raise AssertionError("the app returned without calling start_response()")
            if first is not _NOTHING:
                iterator = itertools.chain((first,), iterator)
            return self._first_chunks(iterator)
        if self.head_sent:
            self.iterator = iter(result)
            return True
        if isinstance(result, FileWrapper) and self._send_file(result):
            return False
        if isinstance(result, (list, tuple)):
            # the whole answer is known: one write, with a Content-Length
            for chunk in result:
                if not isinstance(chunk, bytes):
                    raise AssertionError(f"the app returned {type(chunk).__name__}, not bytes")
            self.head_sent = True
            self.answer.event(WHOLE, b"".join(result) if len(result) != 1 else result[0])
            return False
        return self._first_chunks(iter(result))

    def _first_chunks(self, iterator: Iterator[bytes]) -> bool:
        """Up to the first non-empty chunk, which sends the headers."""
        self.iterator = iterator
        length = self.declared
        for chunk in iterator:
            if not isinstance(chunk, bytes):
                raise AssertionError(f"the app yielded {type(chunk).__name__}, not bytes")
            if not chunk:
                continue  # PEP 3333: headers wait for the first non-empty chunk
            if length is not None and len(chunk) >= length:
                # the whole declared body came at once (a Flask answer): one write
                rest = [c for c in iterator if c]
                if not rest:
                    self.head_sent = True
                    self.answer.event(WHOLE, chunk)
                    return False
                self._data(chunk)
                for piece in rest:
                    self._data(piece)
                self._end()
                return False
            self._data(chunk)
            return True
        self._end()
        return False

    def _end(self) -> None:
        if not self.head_sent:
            self.head_sent = True
            self.answer.event(WHOLE, b"")
        else:
            self.answer.event(END, None)

    def _failed(self) -> None:
        self.answer.event(ERROR, traceback.format_exc())

    def _close(self) -> None:
        close = getattr(self.result, "close", None)
        self.result = self.iterator = None
        if close is not None:
            try:
                close()
            except Exception:
                self.answer.event(ERROR, traceback.format_exc())
        # the app side is over: the call no longer needs its answer, and without this
        # link the two are not a reference cycle (refcounting frees them, the garbage
        # collector has nothing to do)
        self.answer = None  # type: ignore[assignment]

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Hand a real file to the answer side for sendfile; False to iterate instead."""
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            st = os.fstat(fd)
            position = filelike.tell()
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        count = max(0, st.st_size - position)
        length = self.declared
        if length is not None:
            count = min(count, length)
        self.head_sent = True
        # a copy of the descriptor: the app's file is closed at once, ours when sent
        self.answer.event(FILE, (os.dup(fd), position, count))
        return True
