"""One request and the state of its answer (nginx's ``ngx_http_request_t``, small).

The connection creates a ``Request`` from each parsed head; routing fills in the server
and location, a handler answers it through the connection, and the access log reads
what happened from it. Every attribute is set here, at creation.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portico.http.parser import RequestHead, request_line

if TYPE_CHECKING:
    from portico.http.protocol import HttpConnection


class RequestBody:
    """The body of one request as it arrives: buffered until a consumer attaches.

    A consumer (the proxy, the WSGI input stream) calls ``attach(on_data, on_end)``:
    buffered pieces are handed over at once and later ones as they arrive. Until then,
    pieces wait here; past ``limit`` bytes the connection stops reading (backpressure)
    until the consumer drains them.
    """

    __slots__ = ("_on_data", "_on_end", "buffered", "chunks", "complete", "conn", "received")

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = 0
        self.complete = False
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[], None] | None = None

    @property
    def attached(self) -> bool:
        return self._on_data is not None

    def attach(self, on_data: Callable[[bytes], None], on_end: Callable[[], None]) -> None:
        self._on_data = on_data
        self._on_end = on_end
        chunks = self.chunks
        while chunks:
            on_data(chunks.popleft())
        self.buffered = 0
        conn = self.conn
        if conn.reading_paused:
            conn.body_drained()  # reading paused on what was buffered here: go on
        if self.complete:
            on_end()

    def detach(self) -> None:
        """Stop delivering (the consumer gave up); later pieces are dropped."""
        self._on_data = _discard
        self._on_end = _nothing
        self.chunks.clear()
        self.buffered = 0

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        on_data = self._on_data
        if on_data is not None:
            on_data(data)
        else:
            self.chunks.append(data)
            self.buffered += len(data)

    def end(self) -> None:
        self.complete = True
        if self._on_end is not None:
            self._on_end()


class _NoBody(RequestBody):
    """The body of a request without one: complete from the start, never fed."""

    __slots__ = ()

    def __init__(self) -> None:
        self.conn = None  # type: ignore[assignment]
        self.chunks = deque()
        self.buffered = 0
        self.received = 0
        self.complete = True
        self._on_data = None
        self._on_end = None

    def attach(self, on_data: Callable[[bytes], None], on_end: Callable[[], None]) -> None:
        on_end()

    def detach(self) -> None:
        return None


NO_BODY = _NoBody()


def _discard(data: bytes) -> None:
    return None


def _nothing() -> None:
    return None


class Request:
    __slots__ = (
        "body",
        "body_bytes_sent",
        "bytes_sent",
        "captures",
        "cleanups",
        "conn",
        "error_status",
        "finished",
        "head",
        "headers",
        "headers_sent",
        "keep_alive",
        "limited",
        "location",
        "method",
        "on_abort",
        "path",
        "proxy_host",
        "query",
        "redirects",
        "response_chunked",
        "sent_head",
        "server",
        "server_captures",
        "start",
        "status",
        "upstream",
        "upstream_sets",
    )

    def __init__(self, conn: HttpConnection, head: RequestHead, now: float) -> None:
        self.conn = conn
        self.head = head
        # what the head says and a request may change: its method (an error page is
        # a GET), its path and query (internal redirects), keep-alive (our answer)
        self.method = head.method
        self.path = head.path
        self.query = head.query
        self.keep_alive = head.keep_alive
        self.headers = head.headers
        self.start = now  # wall clock (time.time()): $request_time
        self.server: Any = None
        self.location: Any = None
        # the last regex match (location or server_name): $1..$9 and named groups
        self.captures: re.Match[str] | None = None
        self.server_captures: re.Match[str] | None = None
        self.redirects = 0
        self.error_status = 0  # set while an error_page answers (see Site.send_error)
        # most requests have no body: they share one empty, complete body
        self.body = RequestBody(conn) if head.chunked or head.content_length else NO_BODY
        # the answer
        self.status = 0
        self.headers_sent = False
        self.response_chunked = False
        self.sent_head = b""  # the status line and headers, once sent ($sent_http_*)
        self.body_bytes_sent = 0
        self.bytes_sent = 0
        self.finished = False
        # filled by handlers, read by variables
        self.proxy_host = ""
        self.limited = False  # limit_req / limit_conn were applied
        # called once when the request ends, answered or not (limit_conn's release)
        self.cleanups: list[Callable[[], None]] | None = None
        # called if the client goes away before the answer is complete
        self.on_abort: Callable[[], None] | None = None
        self.upstream: Any = None  # the proxy exchange, for the $upstream_* variables
        # headers the upstream's answer carries itself (proxy_pass_header): 1 Server,
        # 2 Date; portico then does not add its own
        self.upstream_sets = 0

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        if self.cleanups is None:
            self.cleanups = []
        self.cleanups.append(cleanup)

    def run_cleanups(self) -> None:
        cleanups, self.cleanups = self.cleanups, None
        for cleanup in cleanups or ():
            cleanup()

    # what the head says and nothing changes (read off the shared head)

    @property
    def target(self) -> bytes:
        return self.head.target

    @property
    def version(self) -> str:
        return self.head.version

    @property
    def content_length(self) -> int | None:
        return self.head.content_length

    @property
    def host(self) -> str:
        return self.head.host

    @property
    def line(self) -> str:
        """The request line as text: the head's own while the method is the one it
        came with (an error page makes a request a GET)."""
        head = self.head
        if self.method == head.method:
            return head.line
        return request_line(self.method, head.target, head.version)

    @property
    def server_name(self) -> str:
        server = self.server
        return server.name if server is not None else ""

    def elapsed(self) -> float:
        return time.time() - self.start
