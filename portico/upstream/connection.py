"""One connection to an upstream peer: the client side of HTTP/1.1.

It moves bytes and reports events; decisions belong to the exchange that uses it
(proxy/exchange.py). Between exchanges an idle connection waits in its group's
keep-alive pool; if the peer closes it or sends anything while idle, it leaves the pool.

Timeouts use the worker's deadline wheel (timeouts.py), as client connections do:
``proxy_connect_timeout`` is handled where the connection is made, ``proxy_send_timeout``
while the request is being written, ``proxy_read_timeout`` between two reads of the
response, ``keepalive_timeout`` while idle.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portico.errors import UpstreamError
from portico.http.client import ResponseHead, ResponseReader
from portico.http.parser import END

if TYPE_CHECKING:
    from portico.proxy.exchange import ProxyExchange
    from portico.upstream.balancers import Peer
    from portico.upstream.group import UpstreamGroup


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "closed",
        "deadline",
        "drain_waiters",
        "exchange",
        "group",
        "peer",
        "reader",
        "reading_paused",
        "requests",
        "timeout_kind",
        "transport",
        "tunnel",
        "wheel_slot",
        "wheel_start",
        "write_paused",
    )

    def __init__(self, group: UpstreamGroup, peer: Peer) -> None:
        self.group = group
        self.peer = peer
        self.transport: Any = None
        self.exchange: ProxyExchange | None = None
        self.reader = ResponseReader()
        self.requests = 0
        self.closed = False
        self.deadline: float | None = None
        self.wheel_slot = 0
        self.wheel_start = math.inf  # (timeouts.py)
        self.timeout_kind = ""
        self.write_paused = False
        self.reading_paused = False
        self.drain_waiters: list[Callable[[], None]] = []
        self.tunnel: Any = None

    # -- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.group.opened(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.to_client(data)
            return
        exchange = self.exchange
        if exchange is None:
            self.close()  # nothing is expected from an idle connection
            return
        reader = self.reader
        whole = reader.take_known(data)
        if whole is not None:
            exchange.whole_response(*whole)
            return  # the answer is complete: no read timeout to renew
        try:
            reader.feed(data)
        except UpstreamError as e:
            exchange.upstream_failed("invalid_header", str(e))
            return
        self._deliver(exchange)
        # proxy_read_timeout runs between two reads: renewed after this one, unless it
        # completed the answer (the connection then went idle, or was closed) or our
        # client is slow (reading paused: the client's send_timeout bounds the wait)
        if self.exchange is exchange and self.timeout_kind == "read" and not self.reading_paused:
            self.set_deadline("read", exchange.handler.read_timeout)

    def _deliver(self, exchange: ProxyExchange) -> None:
        events = self.reader.events
        count = len(events)
        if count >= 2 and events[-1] is END and events[0].__class__ is ResponseHead:
            # the whole response arrived at once: answer the client in one write. What
            # lies between is body (a reader queues one head and one END per exchange:
            # interim 1xx heads are not queued, and it stops at anything after END).
            if count == 3:
                head, body, _ = events
            else:
                head = events.popleft()
                events.pop()
                body = b"".join(events)  # type: ignore[arg-type]
            events.clear()
            exchange.whole_response(head, body)  # type: ignore[arg-type]
            return
        while events and self.exchange is exchange:
            event = events.popleft()
            if event is END:
                exchange.response_end()
            elif event.__class__ is ResponseHead:
                exchange.response_head(event)  # type: ignore[arg-type]
            else:
                exchange.response_data(event)  # type: ignore[arg-type]

    def eof_received(self) -> bool | None:
        # returning None lets the transport close itself: what is held for it goes first
        self.group.worker.outbox.flush()
        if self.tunnel is not None:
            self.tunnel.close()
            return None
        exchange = self.exchange
        if exchange is not None:
            try:
                self.reader.eof()
            except UpstreamError as e:
                exchange.upstream_failed("error", str(e))
                return None
            self._deliver(exchange)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        was_closed = self.closed
        self.closed = True
        self.deadline = None
        self.group.forget(self)
        self.group.lost(self)
        exchange = self.exchange
        if exchange is not None and not was_closed:
            reason = (
                f"upstream connection lost ({exc})"
                if exc
                else "upstream prematurely closed connection"
            )
            exchange.upstream_failed("error", reason)
        for waiter in self.drain_waiters:
            waiter()
        self.drain_waiters.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.exchange
        if exchange is not None:
            self.set_deadline("send", exchange.handler.send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.exchange
        if exchange is not None and self.timeout_kind == "send":
            exchange.expect_answer(self)
        waiters = self.drain_waiters
        if waiters:
            self.drain_waiters = []
            for waiter in waiters:
                waiter()

    def start_tunnel(self, tunnel: Any) -> None:
        """Stop reading HTTP: from now on every byte goes to ``tunnel``."""
        self.exchange = None
        self.tunnel = tunnel
        self.group.open.discard(self)  # a reload does not close it

    # -- use -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.group.worker.outbox.write(self.transport, data)

    def when_writable(self, callback: Callable[[], None]) -> None:
        if not self.write_paused or self.closed:
            callback()
        else:
            self.drain_waiters.append(callback)

    def pause_reading(self) -> None:
        """Our client is slow: stop reading (its send_timeout bounds the wait, so the
        upstream's read timeout does not run meanwhile)."""
        if not self.closed and not self.reading_paused:
            self.reading_paused = True
            self.deadline = None
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
            exchange = self.exchange
            if exchange is not None:
                exchange.expect_answer(self)

    def set_deadline(self, kind: str, timeout: float) -> None:
        self.timeout_kind = kind
        self.group.wheel.set_deadline(self, time.monotonic() + timeout)

    def on_timeout(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
            return
        exchange = self.exchange
        if exchange is None:
            self.close()  # idle past keepalive_timeout
            return
        what = {
            "send": "sending request to upstream",
            "read": "reading response header from upstream"
            if not exchange.response_started
            else "reading upstream",
        }.get(self.timeout_kind, "talking to upstream")
        exchange.upstream_failed(
            "timeout", f"upstream timed out (110: Connection timed out) while {what}"
        )

    def close(self) -> None:
        self._shut(abort=False)

    def abort(self) -> None:
        """Close at once, dropping anything buffered (the exchange is abandoned)."""
        self._shut(abort=True)

    def _shut(self, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline = None
        self.exchange = None
        self.group.forget(self)
        if self.transport is not None:
            self.group.worker.outbox.flush()  # what was written goes before the close
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
