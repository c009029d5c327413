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
"""

from __future__ import annotations

import contextlib
from collections import deque

import httptools

from portico.errors import UpstreamInvalidResponse
from portico.http.parser import END, _End


class ResponseHead:
    """The event: status and headers as received."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "keep_alive",
        "status",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        status: int,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        upgrade: bool,
    ) -> None:
        self.status = status
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade


class _StopAfterHead(Exception):
    pass


class ResponseReader:
    __slots__ = (
        "_head_bytes",
        "_headers",
        "_in_head",
        "_last_head",
        "_parser",
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
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = True
        self._stopped = False
        self._last_head: ResponseHead | None = None
        self.upgrade_data = b""
        # between two responses: nothing of the next one has begun (a connection may
        # only go back to the pool then)
        self.idle = True

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_data = data[upgrade.args[0] :]
            self._stopped = True
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _StopAfterHead):
                self._stopped = True
                self.events.append(END)
                return
            raise UpstreamInvalidResponse(f"upstream sent an invalid response: {e}") from None
        except httptools.HttpParserError as e:
            raise UpstreamInvalidResponse(f"upstream sent an invalid response: {e}") from None
        if self._in_head and self._head_bytes > self.max_head_size:
            raise UpstreamInvalidResponse("upstream sent too big header")

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
        self._headers = []
        self._in_head = True
        self.idle = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        self._head_bytes = 0
        content_length = None
        chunked = False
        upgrade = False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    raise UpstreamInvalidResponse("invalid Content-Length") from None
            elif lower == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
        status = parser.get_status_code()
        if status == 101:
            upgrade = True
        head = ResponseHead(
            status,
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
            content_length,
            chunked,
            upgrade,
        )
        self._last_head = head
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue): the real one follows
        self.events.append(head)
        if self.expect_no_body:
            raise _StopAfterHead

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.idle = True
        if (
            self._last_head is not None
            and 100 <= self._last_head.status < 200
            and self._last_head.status != 101
        ):
            return
        self.events.append(END)
