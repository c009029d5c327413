"""The server side of one HTTP/1.1 connection: bytes in and out, keep-alive, timeouts.

Theory of operation. ``data_received`` feeds the ``RequestReader`` (parser.py), which
queues events. ``_process`` takes them in order: a request head starts an exchange
(routing and a handler, via the site), body pieces go to the request being read, END
closes its body. A second head that arrives while an answer is still being sent waits
in the queue (pipelining: answers go out in request order), and reading pauses while
anything waits, so a client cannot make us buffer without bound.

Handlers answer through ``send_head``/``send_data``/``finish`` or ``send_response``
(everything at once). ``finish`` logs the request, then either closes the connection or
makes it idle and looks at the queue again. Every byte goes out through the worker's
outbox (outbox.py): held until the loop's pass ends, so anything that must follow what
was written on the socket itself (close, EOF, sendfile) flushes it first.

States: ``IDLE`` (waiting for a request; keep-alive), ``HEAD`` (part of a head has
arrived), ``BUSY`` (an exchange is in progress), ``LINGER`` (we have said our last word
and drain what the client still sends before closing, so that a reset does not destroy
the answer in flight), ``CLOSED``.

Timeouts (see timeouts.py, one deadline per connection):

- IDLE: ``keepalive_timeout`` (first request: ``client_header_timeout``) → close quietly
- HEAD: ``client_header_timeout``, counted from the first byte, not renewed → 408
- BUSY, reading a body: ``client_body_timeout`` between two reads → 408 (or close)
- BUSY, client not reading: ``send_timeout`` while writing is paused → close
- LINGER: 5 s → close
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portico.errors import ProtocolError, RemoteProtocolError
from portico.http.parser import END, RequestHead, RequestReader
from portico.http.request import NO_BODY, Request
from portico.http.response import BODILESS_STATUSES, STATUS_LINES, error_page, status_line
from portico.memo import remember

if TYPE_CHECKING:
    from portico.site import Binding
    from portico.worker import WorkerContext

IDLE, HEAD, BUSY, LINGER, CLOSED, TUNNEL = range(6)

LINGERING_TIMEOUT = 5.0
# Request body bytes buffered for a handler that has not attached yet, and queued
# pipelined bytes, before reading pauses.
READ_BUFFER_LIMIT = 256 * 1024
# While a worker holds no more connections than this, a keep-alive connection keeps its
# parser between requests: giving it back to the pool and taking it again costs every
# request, and the memory it saves matters only with many idle connections. At most this
# many idle connections hold one (one keeps it only while the count is this low).
READER_KEEP_BELOW = 1024

_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CLOSE = b"Connection: close\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


# "Content-Length: N\r\n" for the lengths answered before (a server sends the same few
# sizes again and again), in a bounded table
_LENGTH_LINES: dict[int, bytes] = {}


def _length_line(length: int) -> bytes:
    return remember(_LENGTH_LINES, length, b"Content-Length: %d\r\n" % length, 4096)


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_processing",
        "binding",
        "current",
        "deadline",
        "drain_waiters",
        "number",
        "pending_error",
        "reader",
        "reading",
        "reading_held",
        "reading_paused",
        "remote_addr",
        "remote_port",
        "requests",
        "server_addr",
        "server_port",
        "state",
        "transport",
        "tunnel",
        "wheel_slot",
        "wheel_start",
        "worker",
        "write_paused",
    )

    def __init__(self, worker: WorkerContext, binding: Binding) -> None:
        self.worker = worker
        self.binding = binding
        self.transport: Any = None
        # taken from the worker's pool at the first byte, given back when the connection
        # goes idle: an idle connection keeps no parser (issue: memory per connection)
        self.reader: RequestReader = None  # type: ignore[assignment]
        self.current: Request | None = None  # the request being answered
        self.reading: Request | None = None  # the request whose body is arriving
        self.state = IDLE
        self.requests = 0
        self.number = 0
        self.remote_addr = ""
        self.remote_port = 0
        self.server_addr = ""
        self.server_port = ""
        self.deadline: float | None = None
        self.wheel_slot = 0
        self.wheel_start = math.inf  # (timeouts.py)
        self.write_paused = False
        self.reading_paused = False
        self.reading_held = False  # a handler's backpressure (see hold_reading)
        self.drain_waiters: list[Callable[[], None]] = []
        self._processing = False
        self.tunnel: Any = None
        self.pending_error: ProtocolError | None = None

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        worker = self.worker
        self.number = worker.next_connection_number()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote_addr, self.remote_port = peer[0], peer[1]
        else:
            self.remote_addr = "unix:"
        self.server_addr, self.server_port = self.binding.local_address(transport)
        worker.connection_opened(self)
        self._set_deadline(self.binding.header_timeout)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == IDLE and self.reading is None:
            # nothing is pending (IDLE: no head begun, no event queued; and no body of
            # an answered request still arriving, to be read and dropped): a read the
            # binding's readers have parsed before is that request again (parser.py)
            head = self.binding.known_heads.get(data)
            if head is not None:
                if self.reader is None:  # a connection in a request has its reader
                    self.reader = self.worker.take_reader(self.binding.header_limits)
                self._start(head)
                return
        elif state >= LINGER:
            if state == TUNNEL:
                self.tunnel.to_upstream(data)
            return
        reader = self.reader
        if reader is None:
            reader = self.reader = self.worker.take_reader(self.binding.header_limits)
        try:
            reader.feed(data)
        except ProtocolError as e:
            current = self.current
            if current is not None and self.reading is current and END not in reader.events:
                # the bad bytes are in the body of the request being answered (when
                # its body ended before them, they are a request pipelined behind it:
                # the current one is answered first, as below)
                self._process()
                self.reject(e)
                return
            # requests complete before the bad bytes are still answered, in order;
            # the error comes after them (see finish)
            self.pending_error = e
            self._process()
            if self.current is None and self.state < LINGER:
                self.reject(e)
            return
        self._process()
        if self.state == IDLE:
            if reader.in_head:
                # a head has begun and is not complete: all of it must come within the
                # timeout, counted from now (a complete head never pays for this timer)
                self.state = HEAD
                self._set_deadline(self.binding.header_timeout)
            else:
                self._release_reader()

    def eof_received(self) -> bool | None:
        if self.state == TUNNEL:
            self.tunnel.close()
            return None
        current = self.current
        if current is None or self.reader is None or self.state == LINGER:
            # idle, lingering, or half-closed mid-head (a head that will never end)
            self.close()
            return None
        if not current.body.complete and not current.headers_sent:
            # the rest of the body can never come: nginx says nothing more, logs 400
            self.worker.site.error(current, "client prematurely closed connection", "info")
            current.status = 400
            self.abandon(current)
            self.close()
            return None
        exchange = current.upstream
        if exchange is not None and exchange.stops_when_client_closes:
            # nginx takes a client that closes even only its sending side while a proxied
            # answer is pending as gone (proxy_ignore_client_abort off): 499, and the
            # upstream connection closes (see Site.aborted)
            self.close()
            return None
        # keep the transport open to finish the answer, then close
        current.keep_alive = False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        self.state = CLOSED
        self.deadline = None
        self.worker.connection_closed(self)
        request = self.current
        if request is not None and not request.finished:
            self.worker.site.aborted(request)
        for waiter in self.drain_waiters:
            waiter()
        self.drain_waiters.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.state == BUSY:
            self._set_deadline(self.binding.send_timeout_of(self.current))

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.state == BUSY:
            self.deadline = None
        waiters = self.drain_waiters
        if waiters:
            self.drain_waiters = []
            for waiter in waiters:
                waiter()

    # -- events --------------------------------------------------------------------

    def _process(self) -> None:
        if self._processing:
            return  # re-entered from a handler that finished synchronously
        self._processing = True
        try:
            events = self.reader.events
            while events:
                event = events[0]
                if event.__class__ is RequestHead:
                    if self.current is not None or self.state >= LINGER:
                        break  # pipelined: answer the current request first
                    events.popleft()
                    self._start(event)  # type: ignore[arg-type]
                elif event is END:
                    events.popleft()
                    reading = self.reading
                    if reading is not None:
                        self.reading = None
                        reading.body.end()
                        if self.current is reading and self.state == BUSY and not self.write_paused:
                            self.deadline = None
                else:
                    events.popleft()
                    reading = self.reading
                    if reading is not None:
                        self._body_piece(reading, event)  # type: ignore[arg-type]
            if (
                events
                or self.reading_paused
                or self.reading is not None
                or self.reader.paused
                or self.pending_error is not None
            ):
                self._flow_control()
        finally:
            self._processing = False

    def _body_piece(self, request: Request, data: bytes) -> None:
        body = request.body
        limit = self.binding.body_limit_of(request)
        if limit and body.received + len(data) > limit and not request.headers_sent:
            # a chunked body that grew past client_max_body_size
            self.worker.site.error(
                request,
                "client intended to send too large chunked body: "
                f"{body.received}+{len(data)} bytes",
            )
            self.abandon(request)
            self.send_error(request, 413)
            return
        body.feed(data)
        if body.attached and self.current is request:
            self._set_deadline(self.binding.body_timeout_of(request))

    def _flow_control(self) -> None:
        reading = self.reading
        reader = self.reader
        waiting = (
            self.reading_held
            or self.pending_error is not None
            or (
                reader is not None
                and (
                    len(reader.events) > 0
                    or len(reader.held) > READ_BUFFER_LIMIT  # after an Upgrade head
                )
            )
            or (reading is not None and reading.body.buffered > READ_BUFFER_LIMIT)
        )
        if waiting and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not waiting and self.reading_paused and self.state != CLOSED:
            self.reading_paused = False
            self.transport.resume_reading()

    def _start(self, head: RequestHead) -> None:
        self.requests += 1
        self.state = BUSY
        self.deadline = None
        request = Request(self, head, time.time())
        self.current = request
        self.reading = request if request.body is not NO_BODY else None
        self.worker.site.dispatch(request)

    # -- answering -----------------------------------------------------------------

    def body_drained(self) -> None:
        """A consumer took the buffered body: reading may go on."""
        if self.state != CLOSED:
            self._flow_control()

    def hold_reading(self, request: Request, held: bool) -> None:
        """A handler cannot take more of ``request``'s body now (its own peer is slow):
        stop reading from the client until it says so. A call for a request that is
        over (it may come late, from an app thread) changes nothing."""
        if request is not self.current or request.finished:
            return
        self.reading_held = held
        if self.state != CLOSED:
            self._flow_control()

    def want_body(self, request: Request) -> None:
        """A handler is about to read the body: answer ``Expect: 100-continue``."""
        if (
            request.version == "1.1"
            and not request.body.complete
            and request.body.received == 0
            and request.headers.get("expect", "").lower() == "100-continue"
        ):
            self.write(_CONTINUE)
        if not request.body.complete:
            self._set_deadline(self.binding.body_timeout_of(request))
        if self.reading_paused:
            self._flow_control()

    def send_head(self, request: Request, status: int, headers: bytes, length: int | None) -> None:
        """Send the status line and headers; ``length`` None streams the body."""
        if request.finished or self.state >= LINGER:
            return  # the connection answered this request itself (see abandon)
        self.write(self._head(request, status, headers, length))

    def _head(self, request: Request, status: int, headers: bytes, length: int | None) -> bytes:
        """The status line and headers; decides keep-alive and the body's framing."""
        if request.error_status > 0 and status == 200:
            status = request.error_status
        request.status = status
        request.headers_sent = True
        location = request.location
        worker = self.worker
        if location is not None:
            keep = (
                request.keep_alive
                and self.state == BUSY
                and self.requests < location.keepalive_requests
                and worker.accepting
            )
            server = b"" if request.upstream_sets & 1 else location.server_header
            extra = location.extra_headers(request, status) if location.add_headers else b""
        else:
            keep = False
            server = self.binding.server_header
            extra = b""
        if status in BODILESS_STATUSES:
            framing = b""
        elif length is not None:
            framing = _LENGTH_LINES.get(length) or _length_line(length)
        elif request.version == "1.1":
            framing = _CHUNKED
            request.response_chunked = True
        else:
            framing = b""
            keep = False  # HTTP/1.0: the end of the body is the end of the connection
        if keep and (status == 408 or status == 413) and not request.body.complete:
            keep = False  # don't wait for a body we refused
        request.keep_alive = keep
        if request.upstream_sets & 2:
            date_line = b""
        else:
            date = worker.date
            now = time.time()
            date_line = date.text if date.second <= now < date.until else date.update(now)
        head = b"".join(
            (
                STATUS_LINES.get(status) or status_line(status),
                server,
                date_line,
                framing,
                _KEEP_ALIVE if keep else _CLOSE,
                headers,
                extra,
                b"\r\n",
            )
        )
        request.bytes_sent += len(head)
        request.sent_head = head
        return head

    def send_response(self, request: Request, status: int, headers: bytes, body: bytes) -> None:
        """A whole answer at once: one write, then the request is finished."""
        if request.finished or self.state >= LINGER:
            return  # the connection answered this request itself (see abandon)
        size = len(body)
        head = self._head(request, status, headers, size)
        # (write() spelled out: every answer passes here, and the call costs 0.6%)
        if request.method == "HEAD" or status in BODILESS_STATUSES:
            self.worker.outbox.write(self.transport, head)
        else:
            self.worker.outbox.write(self.transport, head + body)
            request.body_bytes_sent += size
            request.bytes_sent += size
        self.finish(request)

    def write(self, data: bytes) -> None:
        """Every byte to the client goes through the worker's outbox (outbox.py)."""
        self.worker.outbox.write(self.transport, data)

    def send_data(self, request: Request, data: bytes) -> None:
        if request.method == "HEAD" or not data or request.finished or self.state >= LINGER:
            return
        request.body_bytes_sent += len(data)
        if request.response_chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        request.bytes_sent += len(data)
        self.write(data)

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call back once the client has taken what was written (writing resumed)."""
        if not self.write_paused or self.state == CLOSED:
            callback()
        else:
            self.drain_waiters.append(callback)

    def finish(self, request: Request) -> None:
        """The answer is complete: log it, then keep the connection or close it."""
        if request.finished:
            return
        request.finished = True
        # a handler's abort hook refers back to the request (a reference cycle): gone
        # now, so that refcounting frees the exchange and the garbage collector idles
        request.on_abort = None
        if request.cleanups is not None:
            request.run_cleanups()
        if request.response_chunked and request.method != "HEAD" and self.state != CLOSED:
            self.write(LAST_CHUNK)
            request.bytes_sent += len(LAST_CHUNK)
        location = request.location
        if location is None:
            self.worker.site.log(request)
        else:
            for log in location.access_logs:
                log.write(request)
        request.upstream = None  # logged: the proxy exchange (which refers to it) may go
        if self.current is not request:
            return
        self.current = None
        if self.state == CLOSED:
            return
        if not request.keep_alive:
            self.linger() if not request.body.complete or self.reader.in_head else self.close()
            return
        reader = self.reader
        if (
            self.reading is not None
            or self.reading_held
            or self.pending_error is not None
            or reader.paused
        ) and not self._settle_after(request):
            return
        if reader.in_head:
            self.state = HEAD
            self._set_deadline(self.binding.header_timeout)
        else:
            self.state = IDLE
            # _set_deadline spelled out, as in send_response (kept alive: the location
            # has a keepalive_timeout, see _head and Location)
            self.worker.wheel.set_deadline(self, time.monotonic() + location.keepalive_timeout)
        if reader.events:
            self._process()
        elif self.reading_paused:
            self._flow_control()
        elif not self._processing and len(self.worker.connections) > READER_KEEP_BELOW:
            self._release_reader()

    def _settle_after(self, request: Request) -> bool:
        """What a request leaves behind, before the connection goes on to the next;
        False when the connection ended instead."""
        if self.reading is request:
            request.body.detach()  # the rest of the body is read and dropped
        if self.reading_held:
            self.reading_held = False  # a handler's backpressure ends with its request
        if self.pending_error is not None and not self.reader.events:
            self.reject(self.pending_error)
            return False
        if self.reader.paused:
            # an Upgrade request answered without switching: HTTP goes on
            try:
                self.reader.resume()
            except ProtocolError as e:
                self.reject(e)
                return False
        return True

    def _release_reader(self) -> None:
        """Idle between requests: the parser goes back to the worker's pool, once the
        worker holds enough connections for their parsers to matter (READER_KEEP_BELOW)."""
        reader = self.reader
        if (
            reader is not None
            and len(self.worker.connections) > READER_KEEP_BELOW
            and self.state == IDLE
            and self.reading is None
            and self.pending_error is None
            and not reader.in_head
            and not reader.events
            and not reader.paused
            and not reader.held
        ):
            self.worker.give_reader(self.binding.header_limits, reader)
            self.reader = None  # type: ignore[assignment]

    def abandon(self, request: Request) -> None:
        """The connection ends this request itself (413, 408, a framing error): its
        handler stops (a proxy exchange drops its upstream, an app stops streaming)."""
        on_abort = request.on_abort
        if on_abort is not None:
            request.on_abort = None
            on_abort()

    def cut(self, request: Request) -> None:
        """End an answer that cannot be completed: no last chunk, so that the client
        sees it truncated rather than whole, and the connection closes."""
        request.keep_alive = False
        request.response_chunked = False
        self.finish(request)
        self.close()

    def send_error(self, request: Request, status: int) -> None:
        """An error answer for a request (error_page applies, via the site)."""
        self.worker.site.send_error(request, status)

    def reject(self, error: ProtocolError) -> None:
        """A request we cannot parse: answer its status, log it, close."""
        status = error.status
        self.worker.site.log_protocol_error(self, error)
        reading = self.reading
        if reading is not None and reading.finished:
            # bad framing in the body of a request already answered: nothing to say
            self.close()
            return
        request = self.current
        if request is not None and not request.finished:
            self.abandon(request)
            if not request.headers_sent:
                request.keep_alive = False
                self.send_error(request, status)
            else:
                self.close()
            return
        body = error_page(status, self.binding.server_tokens)
        head = b"".join(
            (
                status_line(status),
                self.binding.server_header,
                self.worker.date_header(),
                b"Content-Type: text/html\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n",
                _CLOSE,
                b"\r\n",
            )
        )
        self.write(head + body)
        self.requests += 1  # a request, if not a valid one: nginx counts it too
        self.worker.site.log_rejected(self, status, head, len(body))
        self.linger()

    # -- closing and timeouts ----------------------------------------------------------

    def _set_deadline(self, timeout: float | None) -> None:
        if timeout is None:
            self.deadline = None
            return
        self.worker.wheel.set_deadline(self, time.monotonic() + timeout)

    def on_timeout(self) -> None:
        state = self.state
        if state == TUNNEL:
            self.tunnel.close()
        elif state == HEAD:
            self.reject(RemoteProtocolError("client timed out sending the request head", 408))
        elif state == BUSY:
            request = self.current
            if request is not None and not request.headers_sent and not request.body.complete:
                self.worker.site.log_timeout(request, "client timed out sending the body")
                request.keep_alive = False
                self.abandon(request)
                self.send_error(request, 408)
            else:
                if request is not None:
                    self.worker.site.log_timeout(request, "client timed out reading")
                self.abort()
        elif state == CLOSED:
            self.abort()  # closed with data the client never took: send_timeout is up
        else:
            self.close()

    def linger(self) -> None:
        """Close for writing, then drop what the client still sends, for a while."""
        if self.state in (LINGER, CLOSED):
            return
        self.state = LINGER
        if self.reader is not None:
            self.reader.events.clear()
        transport = self.transport
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        self.worker.outbox.flush()  # what was written goes before the EOF
        try:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
                return
        except (OSError, RuntimeError):
            transport.close()
            return
        self._set_deadline(LINGERING_TIMEOUT)

    # -- tunnels -----------------------------------------------------------------------

    def start_tunnel(self, request: Request, headers: bytes, tunnel: Any) -> bytes:
        """Answer 101 and stop speaking HTTP: from now on ``tunnel`` gets every byte.
        Returns what the client sent after its request head (already tunnel data)."""
        location = request.location
        head = b"".join(
            (
                status_line(101),
                location.server_header if location is not None else self.binding.server_header,
                self.worker.date_header(),
                headers,
                b"\r\n",
            )
        )
        request.status = 101
        request.headers_sent = True
        request.keep_alive = False
        request.bytes_sent += len(head)
        request.sent_head = head
        self.write(head)
        self.state = TUNNEL
        self.tunnel = tunnel
        self.reader.events.clear()
        early = self.reader.take_held()
        if self.reading_paused and not self.reading_held:
            self.reading_paused = False
            self.transport.resume_reading()
        return early

    def set_tunnel_deadline(self, timeout: float) -> None:
        self._set_deadline(timeout)

    def close(self) -> None:
        """Close after what was written is sent; a client that does not take it within
        send_timeout is cut off (on_timeout in state CLOSED)."""
        if self.state == CLOSED:
            return
        request = self.current
        if self.state == TUNNEL and request is not None and not request.finished:
            self.current = None
            self.worker.site.ended_unanswered(request)
        self.state = CLOSED
        self.deadline = None
        transport = self.transport
        self.worker.outbox.flush()  # what was written goes before the close
        transport.close()
        if transport.get_write_buffer_size():
            self._set_deadline(self.binding.send_timeout_of(request))

    def abort(self) -> None:
        """Close at once, dropping what the client did not take."""
        self.close()
        self.deadline = None
        self.transport.abort()

    def shutdown(self) -> None:
        """Graceful stop: close an idle keep-alive connection now, else after the current
        answer. A new connection that has not sent its first request yet is not idle,
        as in nginx: it gets that request answered (with Connection: close), since the
        client could not know we were stopping when it connected."""
        if self.state == LINGER or (self.state == IDLE and self.requests > 0):
            self.close()
        elif self.current is not None:
            self.current.keep_alive = False
