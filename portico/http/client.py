"""Responses off the wire (the client role, for the proxy): bytes in, events out, no I/O.

``ResponseReader.feed(data)`` appends events to ``events``: a ``ResponseHead`` when the
status line and headers are complete, ``bytes`` for each piece of the body (de-chunked),
``END`` when the message is complete. ``eof()`` tells the reader the peer closed: a body
delimited by the close ends there, anything else unfinished is an error.

Errors raise ``UpstreamInvalidResponse``: the response cannot be trusted and the
connection must not be reused. A head larger than ``max_head_size`` is one of them, so
an upstream cannot make us buffer without bound either.

A response to HEAD has no body whatever its headers say, and httptools cannot be told
so: after the head of such a response the reader stops (``expect_no_body``), and the
caller must not reuse the connection.

Headers are not taken one by one. httptools (llhttp, strict) validates the whole head:
every line ends in CRLF, no bare CR or LF, no folded lines, no space before a colon, no
control characters, at most one Content-Length and not together with Transfer-Encoding.
So the head as received is kept as one block of ``Name: value\r\n`` lines (after the
``\n`` that ends the status line, so that every line follows one), which the
proxy filters with one regular expression (proxy/headers.py); a header is looked up or
the block split into pairs only when something asks (``ResponseHead.headers``). This
saves a Python call per header on every proxied response.

Bytes that arrive after a response is complete, before another request was sent
(``start``), are not a response to anything: the reader stops, ``idle`` stays false,
and the connection must not be reused.

Whole responses are recognised by their head. A backend answers with the same head
again and again (only Date changes, once a second), and a read that holds one whole
response delimited by Content-Length is parsed the same way whenever its head is the
same: ``take_known`` finds the head of such a read in a table of heads parsed before
(``_KNOWN``, filled by ``feed`` when a read from the start of a response held exactly
a head and its body) and hands back the head and the body without httptools.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque

import httptools

from portico.errors import UpstreamInvalidResponse
from portico.http.parser import END, KNOWN_HEAD_SIZE_MAX, KNOWN_HEADS_MAX, _End
from portico.memo import remember

_CONTENT_LENGTH = re.compile(rb"\ncontent-length:[ \t]*(\d+)", re.I)
_TRANSFER_ENCODING = re.compile(rb"\ntransfer-encoding:([^\r]*)", re.I)


class ResponseHead:
    """The event: the status, and the header lines as received (``block``)."""

    __slots__ = ("block", "framed", "keep_alive", "status", "upgrade")

    def __init__(self, status: int, block: bytes, keep_alive: bool) -> None:
        self.status = status
        # "\n" and every header line, "Name: value\r\n", in order (validated by
        # httptools): each line starts after a "\n", which makes searching it cheap
        self.block = block
        self.keep_alive = keep_alive
        self.upgrade = status == 101
        # a body is what the framing says (not a 101, 204 or 304, which have none)
        self.framed = status != 101 and status != 204 and status != 304

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs as received, the value without surrounding whitespace."""
        pairs = []
        for line in self.block[1:].split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
        return pairs

    @property
    def content_length(self) -> int | None:
        match = _CONTENT_LENGTH.search(self.block)
        return int(match[1]) if match is not None else None

    @property
    def chunked(self) -> bool:
        codings = _TRANSFER_ENCODING.findall(self.block)
        return bool(codings) and codings[-1].strip().lower().endswith(b"chunked")


# Heads of whole responses parsed before: their bytes (up to the empty line) → those
# bytes, the head and its Content-Length. Bounded as the request heads are (parser.py:
# KNOWN_HEADS_MAX heads of at most KNOWN_HEAD_SIZE_MAX bytes).
Known = tuple[bytes, ResponseHead, int]
_KNOWN: dict[bytes, Known] = {}


class _Stop(Exception):
    """Raised in a callback to stop parsing (httptools offers no other way)."""


class ResponseReader:
    __slots__ = (
        "_buffer",
        "_expecting",
        "_fresh",
        "_head_start",
        "_in_head",
        "_last_head",
        "_parser",
        "_recent",
        "_stopped",
        "events",
        "expect_no_body",
        "idle",
        "max_head_size",
        "upgrade_data",
    )

    def __init__(self, max_head_size: int = 64 * 1024, expect_no_body: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.max_head_size = max_head_size
        self.expect_no_body = expect_no_body
        self.events: deque[ResponseHead | bytes | _End] = deque()
        # while a head is incomplete: what came since the first head of this exchange
        # began, and where the current head starts in it (after any 1xx interim heads)
        self._buffer = b""
        self._head_start = 0
        self._in_head = True
        self._expecting = True  # a request went out and its final answer is not complete
        self._stopped = False
        self._last_head: ResponseHead | None = None
        # nothing of the answer has come yet, and it may be a known one (take_known)
        self._fresh = not expect_no_body
        # the known answer this connection got last: most often the next one's head too
        self._recent: Known | None = None
        self.upgrade_data = b""
        # between two responses: nothing of the next one has begun (a connection may
        # only go back to the pool then)
        self.idle = True

    def start(self) -> None:
        """A request went out on this (kept-alive) connection: its answer comes next."""
        self._expecting = True
        self._in_head = True
        self._buffer = b""
        self._head_start = 0
        self._last_head = None
        self._fresh = not self.expect_no_body and not self._stopped

    def take_known(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        """The head and the body of ``data`` if it is one whole response with a head
        parsed before, read from the start of the answer to a request; the reader is
        then as if it had been fed ``data``. None otherwise (feed it)."""
        if not self._fresh:
            return None
        known = self._recent
        if known is None or not data.startswith(known[0]):
            known = _KNOWN.get(data[: data.find(b"\r\n\r\n") + 4])
            if known is None:
                return None
            self._recent = known
        raw, head, length = known
        end = len(raw)
        if len(data) - end != length:
            return None
        # as feed leaves it after such a response (see the callbacks)
        self._fresh = False
        self._last_head = head
        self._in_head = False
        self._expecting = False
        self.idle = True
        return head, data[end:]

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        fresh = self._fresh
        self._fresh = False
        in_head = self._in_head
        if in_head:
            self._buffer = self._buffer + data if self._buffer else data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_data = data[upgrade.args[0] :]
            self._stopped = True
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _Stop):
                self._stopped = True
                return
            raise UpstreamInvalidResponse(f"upstream sent an invalid response: {e}") from None
        except httptools.HttpParserError as e:
            raise UpstreamInvalidResponse(f"upstream sent an invalid response: {e}") from None
        if self._in_head:
            buffer = self._buffer
            if self._head_start:
                buffer = self._buffer = buffer[self._head_start :]
                self._head_start = 0
            if len(buffer) > self.max_head_size:
                raise UpstreamInvalidResponse("upstream sent too big header")
        elif in_head:
            self._buffer = b""
            self._head_start = 0
            if fresh and self.idle and not self._stopped:
                self._remember(data)

    def _remember(self, data: bytes) -> None:
        """``data`` was one whole answer, from its first byte: keep its head for
        take_known if its body was delimited by Content-Length, so that the same head
        always means the same framing."""
        events = self.events
        head = events[0]
        if head.__class__ is not ResponseHead or events[-1] is not END or len(events) > 3:
            return
        if not head.framed:  # type: ignore[union-attr]
            return  # a 101 (a tunnel), a 204 or 304 (no body, whatever the length says)
        length = head.content_length  # type: ignore[union-attr]
        end = data.find(b"\r\n\r\n") + 4
        if length is None or head.chunked or end > KNOWN_HEAD_SIZE_MAX:  # type: ignore[union-attr]
            return
        if data[data.find(b"\n") : end - 2] != head.block:  # type: ignore[union-attr]
            return  # the first head of the read was another one (an interim 100)
        if len(data) - end == length:
            raw = data[:end]
            remember(_KNOWN, raw, (raw, head, length), KNOWN_HEADS_MAX)  # type: ignore[arg-type]

    def eof(self) -> None:
        """The peer closed the connection."""
        if self._stopped:
            return
        self._stopped = True
        if self._in_head:
            raise UpstreamInvalidResponse(
                "upstream prematurely closed connection while reading response header from upstream"
            )
        events = self.events
        if not events or events[-1] is not END:
            # a body without Content-Length or chunking ends with the connection; with
            # them, an early close is a truncated response
            with contextlib.suppress(httptools.HttpParserError):
                self._parser.feed_data(b"")
            head = self._last_head
            if head is not None and (head.chunked or head.content_length is not None):
                raise UpstreamInvalidResponse(
                    "upstream prematurely closed connection while reading upstream"
                )
            events.append(END)

    # -- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self.idle = False
        if not self._expecting:
            raise _Stop  # bytes after the answer: not an answer to anything we sent

    def on_headers_complete(self) -> None:
        buffer = self._buffer
        start = self._head_start
        # the first empty line ends the head: no header line can be empty
        end = buffer.find(b"\r\n\r\n", start) + 2
        line_end = buffer.find(b"\r\n", start) + 2
        parser = self._parser
        status = parser.get_status_code()
        head = ResponseHead(status, buffer[line_end - 1 : end], parser.should_keep_alive())
        self._last_head = head
        self._head_start = end + 2
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue): the real one follows
        self._in_head = False
        self.events.append(head)
        if self.expect_no_body:
            self.events.append(END)
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.idle = True
        head = self._last_head
        if head is not None and 100 <= head.status < 200 and head.status != 101:
            return
        self._expecting = False
        self.events.append(END)
