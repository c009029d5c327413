"""One proxied request: pick a peer, send, stream the answer back, or try the next peer.

Theory of operation. ``start`` asks the group's balancer for a peer, takes an idle
keep-alive connection to it or opens one, writes the request head and streams the body.
The upstream connection reports the response as events (``response_head``,
``response_data``, ``response_end``; ``whole_response`` when all of it came in one
read) or a failure (``upstream_failed``). Bytes flow with backpressure both ways: a
client that does not read pauses the upstream's reading, an upstream that does not read
pauses the client's.

Failures follow ``proxy_next_upstream``. An attempt that fails with a listed condition
goes to the next peer while all of these hold: nothing has reached the client yet;
``proxy_next_upstream_tries`` and ``proxy_next_upstream_timeout`` allow another; and,
if the request already reached the failed peer, its method is idempotent (or
``non_idempotent`` is listed) and its body can be sent again (it was kept whole: at most
``proxy_request_buffer_size``). Otherwise the client gets 502 (504 after a timeout), or,
once the answer has started, it is cut short (no last chunk) and its connection closed.
A kept-alive connection that turns out closed by the peer is retried once on a fresh
connection to the same peer, without counting as a failure, if the method allows a second
try (idempotent, or ``non_idempotent`` listed): the peer may have read the request
before it closed. The read timeout runs once the whole request is sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from portico.http.client import ResponseHead, ResponseReader
from portico.http.protocol import LAST_CHUNK
from portico.http.request import NO_BODY

if TYPE_CHECKING:
    from portico.http.request import Request
    from portico.proxy.handler import ProxyHandler
    from portico.upstream.balancers import Peer
    from portico.upstream.connection import UpstreamConnection

NON_IDEMPOTENT = frozenset({"POST", "PATCH", "LOCK"})


class ProxyExchange:
    __slots__ = (
        "attempt_started",
        "body_done",
        "chunked_body",
        "conn",
        "connect_timer",
        "earlier",
        "finished",
        "group",
        "handler",
        "has_body",
        "keep_alive_upstream",
        "kept",
        "kept_size",
        "last_status",
        "peer",
        "request",
        "request_sent",
        "response_started",
        "retried_reuse",
        "reused",
        "started",
        "statuses",
        "times",
        "tried",
        "upgrade",
        "upstream",
    )

    def __init__(self, handler: ProxyHandler, request: Request) -> None:
        self.handler = handler
        self.request = request
        self.conn = request.conn
        self.group = handler.group
        self.peer: Peer | None = None
        self.upstream: UpstreamConnection | None = None
        # the exchange of this request before an internal redirect (error_page), if
        # any: $upstream_* list both, as nginx does ("... : ...")
        self.earlier: ProxyExchange | None = request.upstream
        self.tried: list[Peer] = []
        self.started = self.attempt_started = time.monotonic()
        self.reused = False
        self.retried_reuse = False
        self.request_sent = False
        self.response_started = False
        self.finished = False
        self.keep_alive_upstream = True
        self.connect_timer: asyncio.TimerHandle | None = None
        body = request.body
        if body is NO_BODY or request.error_status:
            # (after an error_page redirect the method is GET and no body goes on: nginx)
            self.has_body = self.chunked_body = False
            self.body_done = True
            self.kept: list[bytes] | None = None
        else:
            self.has_body = True
            self.chunked_body = request.head.chunked
            self.body_done = body.complete
            self.kept = []  # the body as sent so far, while it is small enough to send again
        self.kept_size = 0
        self.last_status = 502  # what the client gets if no peer is left: 504 after a timeout
        # per attempt, for $upstream_status and $upstream_response_time (formatted only
        # if a log asks: see variables.py); $upstream_addr is the tried peers'
        self.statuses: list[int] = []
        self.times: list[float] = []
        self.upgrade: str | None = request.headers.get("upgrade") if request.head.upgrade else None

    @property
    def addrs(self) -> list[str]:
        """The address of each peer tried, or the group's name when none could be."""
        return [peer.address for peer in self.tried] if self.tried else [self.group.name]

    # -- attempts ----------------------------------------------------------------------

    def start(self) -> None:
        request = self.request
        request.on_abort = self.client_gone
        request.upstream = self
        request.proxy_host = self.handler.proxy_host
        if not request.body.complete:
            self.conn.want_body(request)
        self.try_peer()

    def try_peer(self) -> None:
        peer = self.group.pick(self.request, self.tried)
        if peer is None:
            if not self.tried:
                self.conn.worker.site.error(
                    self.request,
                    "no live upstreams while connecting to upstream",
                    upstream=self._peer_url(),
                )
                self.statuses.append(502)
                self.times.append(0.0)
            self.fail(self.last_status)
            return
        self.peer = peer
        tried = self.tried
        if tried:
            self.attempt_started = time.monotonic()  # the first starts with the exchange
        tried.append(peer)
        upstream = self.group.idle_connection(peer)
        if upstream is not None:
            self.reused = True
            self.connected(upstream)
        else:
            self.reused = False
            self.connect(peer)

    def connect(self, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        future = self.group.connect(peer, loop, self.on_connect)
        self.connect_timer = loop.call_later(self.handler.connect_timeout, future.cancel)

    def on_connect(self, upstream: UpstreamConnection | None, error: BaseException | None) -> None:
        timer = self.connect_timer
        if timer is not None:
            timer.cancel()
            self.connect_timer = None
        if self.finished:
            if upstream is not None:
                upstream.close()
            return
        if upstream is None:
            if isinstance(error, TimeoutError):
                self.attempt_failed(
                    "timeout",
                    "upstream timed out (110: Connection timed out) while connecting to upstream",
                )
            else:
                reason = (
                    f"({error.errno}: {error.strerror})"
                    if isinstance(error, OSError)
                    else f"({error!r})"
                )
                self.attempt_failed(
                    "error", f"connect() failed {reason} while connecting to upstream"
                )
            return
        self.connected(upstream)

    def connected(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        upstream.exchange = self
        upstream.requests += 1
        request = self.request
        if request.method == "HEAD":
            upstream.reader = ResponseReader(expect_no_body=True)
        else:
            upstream.reader.start()
        body = request.body
        head = self.handler.request_template.request_head(
            request,
            None if self.chunked_body or request.error_status else request.head.content_length,
            self.chunked_body,
            self.upgrade,
        )
        # proxy_read_timeout counts once the whole request is out (nginx)
        self.expect_answer(upstream)
        if not self.request_sent:
            # the first time: the body streams as it arrives (and is kept while small)
            upstream.write(head)
            self.request_sent = True
            if self.has_body:
                body.attach(self.body_data, self.body_end)
            return
        # a later attempt: the body so far was kept (whole, or all of it up to now while
        # it is still arriving: body_data goes on writing to this new connection)
        if self.kept is None and self.has_body:
            # our own limit, not the peer's fault
            self.attempt_failed(
                "error", "the request body was too large to send again", failed=False
            )
            return
        parts = [head]
        if self.kept:
            parts.extend(self.frame(chunk) for chunk in self.kept)
        if self.chunked_body and self.body_done:
            parts.append(LAST_CHUNK)
        upstream.write(b"".join(parts))
        self.request_sent = True

    # -- the request body ----------------------------------------------------------------

    def frame(self, chunk: bytes) -> bytes:
        if self.chunked_body:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def body_data(self, chunk: bytes) -> None:
        kept = self.kept
        if kept is not None:
            if self.kept_size + len(chunk) <= self.handler.keep_body_size:
                kept.append(chunk)
                self.kept_size += len(chunk)
            else:
                self.kept = None  # too big to send twice
        upstream = self.upstream
        if upstream is None or upstream.closed:
            return
        upstream.write(self.frame(chunk))
        if upstream.write_paused:
            conn = self.conn
            request = self.request
            conn.hold_reading(request, True)
            upstream.when_writable(lambda: conn.hold_reading(request, False))

    def body_end(self) -> None:
        self.body_done = True
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            if self.chunked_body:
                upstream.write(LAST_CHUNK)
            self.expect_answer(upstream)

    def expect_answer(self, upstream: UpstreamConnection) -> None:
        """The read timeout runs once the request is all sent (until then, only
        proxy_send_timeout applies, while the upstream does not take what we write)."""
        if self.body_done:
            upstream.set_deadline("read", self.handler.read_timeout)
        else:
            upstream.deadline = None

    # -- the response ----------------------------------------------------------------

    def _divert(self, head: ResponseHead) -> bool:
        """Handle a head that is not passed on as it is; True when handled."""
        status = head.status
        handler = self.handler
        if status in handler.retry_statuses and self.can_retry(f"http_{status}"):
            self.statuses.append(status)
            self.attempt_failed(
                f"http_{status}",
                f"upstream answered {status}",
                failed=status in (500, 502, 503, 504, 429),
                log_level="warn",
            )
            return True
        if (
            handler.intercept_errors
            and status >= 300
            and status in self.request.location.error_pages
        ):
            self.statuses.append(status)
            self.complete_attempt(reusable=False)
            self.conn.send_error(self.request, status)
            return True
        return False

    def response_head(self, head: ResponseHead) -> None:
        if self.handler.diverts and self._divert(head):
            return
        if head.upgrade and self.upgrade is not None:
            self.tunnel(head)
            return
        self.statuses.append(head.status)
        self.response_started = True
        self.conn.send_head(
            self.request,
            head.status,
            self._headers(head),
            head.content_length,
        )
        self.keep_alive_upstream = head.keep_alive

    def response_data(self, data: bytes) -> None:
        conn = self.conn
        conn.send_data(self.request, data)
        if conn.write_paused:
            upstream = self.upstream
            if upstream is not None:
                upstream.pause_reading()
                conn.when_writable(upstream.resume_reading)

    def response_end(self) -> None:
        reusable = self.request.method != "HEAD"
        self.complete_attempt(reusable=reusable)
        self.conn.finish(self.request)

    def whole_response(self, head: ResponseHead, body: bytes) -> None:
        if self.handler.diverts and self._divert(head):
            return
        if not head.framed or self.request.method == "HEAD":
            self.response_head(head)
            if self.upstream is not None and self.upstream.exchange is self:
                self.response_end()
            return
        status = head.status
        self.statuses.append(status)
        self.response_started = True
        self.keep_alive_upstream = head.keep_alive
        self.complete_attempt(reusable=True)
        self.conn.send_response(self.request, status, self._headers(head), body)

    def _headers(self, head: ResponseHead) -> bytes:
        headers, own = self.handler.response_filter.headers(head.block)
        self.request.upstream_sets = own
        return headers

    def _end_attempt(self, failed: bool) -> None:
        """An attempt is over, whatever its end: its time for $upstream_response_time,
        its outcome for the balancer (``failed`` feeds max_fails)."""
        elapsed = time.monotonic() - self.attempt_started
        self.times.append(elapsed)
        if self.peer is not None:
            self.group.balancer.done(self.peer, elapsed, failed)

    def complete_attempt(self, reusable: bool) -> None:
        """The upstream's part is over: account, and keep or close the connection."""
        self.finished = True
        self._end_attempt(failed=False)
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            if (
                reusable
                and self.body_done
                and self.keep_alive_upstream
                and not upstream.reader.events
                and upstream.reader.idle
            ):
                self.group.release(upstream)  # (which sets its idle deadline)
            else:
                upstream.close()

    # -- failures ----------------------------------------------------------------------

    def upstream_failed(self, kind: str, message: str) -> None:
        """The upstream connection failed: an error, a timeout, or an invalid answer."""
        if self.finished:
            return
        upstream = self.upstream
        if self.response_started:
            # part of the answer is out: all we can do is cut the client off
            self.conn.worker.site.error(self.request, message, upstream=self._peer_url())
            self.finished = True
            if upstream is not None:
                upstream.close()
            # nginx counts no failure once the answer has begun: a cut answer does not
            # take the peer out
            self._end_attempt(failed=False)
            self.conn.cut(self.request)
            return
        if (
            kind == "error"
            and self.reused
            and not self.retried_reuse
            and self._may_send_again()
            and upstream is not None
            and (not self.has_body or self.kept is not None)
            and not upstream.reader.events
        ):
            # the peer closed a kept-alive connection as we reused it: try a new one
            self.retried_reuse = True
            self.reused = False
            upstream.close()
            self.upstream = None
            assert self.peer is not None
            self.connect(self.peer)
            return
        self.attempt_failed(kind, message)

    def attempt_failed(
        self, kind: str, message: str, failed: bool = True, log_level: str = "error"
    ) -> None:
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.close()
        self.last_status = 504 if kind == "timeout" else 502
        if not kind.startswith("http_"):
            self.statuses.append(self.last_status)  # an http_* answer has its own
        self._end_attempt(failed)
        self.conn.worker.site.error(
            self.request, message, level=log_level, upstream=self._peer_url()
        )
        if self.can_retry(kind):
            self.try_peer()
            return
        self.fail(self.last_status)

    def _may_send_again(self) -> bool:
        """nginx's rule for a request that reached a peer: only an idempotent method
        goes out again, unless proxy_next_upstream says non_idempotent."""
        return (
            self.request.method not in NON_IDEMPOTENT
            or "non_idempotent" in self.handler.next_upstream
        )

    def can_retry(self, kind: str) -> bool:
        handler = self.handler
        if kind not in handler.next_upstream or self.finished:
            return False
        if not self.group.has_untried(self.tried):
            return False  # as nginx: the last possible try's answer or error stands
        if handler.tries and len(self.tried) >= handler.tries:
            return False
        if handler.next_timeout and time.monotonic() - self.started >= handler.next_timeout:
            return False
        return not self.request_sent or (self._may_send_again() and self._resendable())

    def _resendable(self) -> bool:
        """Whether the request can be written again: no body, or all of it kept."""
        return not self.has_body or (self.body_done and self.kept is not None)

    def fail(self, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        self.conn.send_error(self.request, status)

    def client_gone(self) -> None:
        """The client closed its connection: abandon the upstream side."""
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        upstream = self.upstream
        self.upstream = None
        if not self.finished and self.peer is not None:
            self._end_attempt(failed=False)
        self.finished = True
        if upstream is not None:
            upstream.abort()

    # -- bookkeeping -----------------------------------------------------------------

    @property
    def stops_when_client_closes(self) -> bool:
        """Whether the client closing its connection, or its sending side, ends this
        exchange (proxy_ignore_client_abort off, nginx's default)."""
        return not self.handler.ignore_client_abort

    def _peer_url(self) -> str:
        """The URL as sent upstream (nginx's "upstream:" in error lines)."""
        address = self.peer.address if self.peer is not None else self.group.name
        target = self.handler.request_template.target(self.request).decode("latin-1")
        return f"http://{address}{target}"

    # -- tunnels (Upgrade: websocket) ------------------------------------------------------

    def tunnel(self, head: ResponseHead) -> None:
        from portico.proxy.tunnel import Tunnel

        upstream = self.upstream
        assert upstream is not None
        self.statuses.append(101)
        self.response_started = True
        self.finished = True
        self._end_attempt(failed=False)
        headers = self._headers(head)
        upgrade = next(
            (value.decode("latin-1") for name, value in head.headers if name.lower() == b"upgrade"),
            self.upgrade or "",
        )
        Tunnel(
            self.conn, self.request, upstream, headers, upgrade, self.handler.read_timeout
        ).start()
