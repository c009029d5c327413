"""The event-loop side of a WSGI call: turns the app's events into an HTTP answer.

Events arrive from the app side (call.py) directly in inline mode, or through the pool's
hand-off (pool.py) in threaded mode; either way ``handle`` runs on the event loop.

Framing: a ``WHOLE`` answer gets a Content-Length (its body is known), except a HEAD
answer, which keeps the length the app declared. A streamed answer keeps the app's
Content-Length if it gave one; otherwise it is chunked for HTTP/1.1 clients and ends
with the connection for HTTP/1.0 ones (the connection decides).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portico.http.protocol import CLOSED
from portico.http.response import BODILESS_STATUSES
from portico.http.sendfile import send_file
from portico.wsgi.call import DATA, END, ERROR, FILE, HEAD, WHOLE, WsgiCall

if TYPE_CHECKING:
    from portico.http.request import Request


class WsgiAnswer:
    __slots__ = ("call", "conn", "deliver", "done", "remaining", "request", "sendfile", "sent_head")

    def __init__(self, request: Request, sendfile: bool) -> None:
        self.request = request
        self.conn = request.conn
        self.sendfile = sendfile
        self.call: WsgiCall | None = None
        self.sent_head = False
        self.done = False
        self.remaining: int | None = None  # of the app's Content-Length, once streaming
        # how events reach ``handle``: directly (None), or through the pool's hand-off
        self.deliver: Callable[[WsgiAnswer, int, Any], None] | None = None

    def event(self, kind: int, payload: Any) -> None:
        """From the app side: one event for ``handle``, on the event loop."""
        deliver = self.deliver
        if deliver is None:
            self.handle(kind, payload)
        else:
            deliver(self, kind, payload)

    def cancel(self) -> None:
        """The client went away: the app side stops at its next chunk."""
        self.done = True
        call = self.call
        if call is not None:
            call.cancelled = True
            call.wake()

    def gone(self) -> bool:
        """The client's connection is closed or closing."""
        return self.done or self.conn.state == CLOSED or self.conn.transport.is_closing()

    def later(self, callback: Callable[[], None]) -> None:
        self.conn.worker.loop.call_soon(callback)

    def when_writable(self, callback: Callable[[], None]) -> None:
        call = self.call
        assert call is not None

        def resume() -> None:
            call.paused = False
            callback()

        self.conn.when_writable(resume)

    def _head(self) -> tuple[int, bytes]:
        call = self.call
        assert call is not None and call.status is not None
        return int(call.status[:3]), call.head_block

    def handle(self, kind: int, payload: Any) -> None:
        if self.done:
            if kind == ERROR:
                self._log_error(payload)
            elif kind == FILE:
                os.close(payload[0])  # the client went away: the copy is ours to close
            return
        conn = self.conn
        request = self.request
        if kind == WHOLE:
            status, headers = self._head()
            self.sent_head = True
            self.done = True
            declared = self.call.declared  # type: ignore[union-attr]
            if request.method == "HEAD" or status in BODILESS_STATUSES:
                # no body, whatever Content-Length says (a HEAD keeps the GET's length)
                conn.send_head(request, status, headers, declared)
                conn.finish(request)
            elif declared is None or declared == len(payload):
                conn.send_response(request, status, headers, payload)
            elif declared < len(payload):
                # PEP 3333: never more than the app's Content-Length
                conn.send_response(request, status, headers, payload[:declared])
            else:
                self._short(status, headers, declared, payload)
        elif kind == DATA:
            call = self.call
            assert call is not None
            call.consumed += len(payload)
            remaining = self.remaining
            if remaining is not None:
                # PEP 3333: never more than the app's Content-Length; the rest is dropped
                if len(payload) > remaining:
                    payload = payload[:remaining]
                self.remaining = remaining - len(payload)
            conn.send_data(request, payload)
            if conn.write_paused and not call.paused:
                call.paused = True
                if not call.inline:
                    conn.when_writable(self._resume)
            elif call.inline is False:
                call.wake()
        elif kind == HEAD:
            status, headers = self._head()
            self.sent_head = True
            declared = self.call.declared  # type: ignore[union-attr]
            self.remaining = declared
            conn.send_head(request, status, headers, declared)
        elif kind == END:
            self.done = True
            call = self.call
            declared = call.declared if call is not None else None
            if (
                declared is not None
                and request.method != "HEAD"
                and request.status not in BODILESS_STATUSES
                and request.body_bytes_sent < declared
            ):
                # the app promised more than it gave: the client must not wait for it
                self.conn.worker.site.error(
                    request, f"the app sent {request.body_bytes_sent} of {declared} declared bytes"
                )
                request.keep_alive = False
            conn.finish(request)
            if not request.keep_alive and declared is not None:
                conn.close()
        elif kind == FILE:
            self._file(*payload)
        elif kind == ERROR:
            self.fail(payload)

    def _resume(self) -> None:
        call = self.call
        if call is not None:
            call.paused = False
            call.wake()

    def _file(self, fd: int, offset: int, count: int) -> None:
        status, headers = self._head()
        self.sent_head = True
        self.done = True
        send_file(self.conn, self.request, status, headers, fd, offset, count, self.sendfile)

    def fail(self, text: str) -> None:
        """The app raised, or handling one of its events did (a bug of ours; the pool
        says so): log ``text``, stop the app side, end the answer (500, or cut)."""
        self._log_error(text)
        self.cancel()  # a threaded app may be waiting to go on: it stops
        if not self.sent_head:
            self.conn.send_error(self.request, 500)
        else:
            self._cut()

    def _cut(self) -> None:
        self.conn.cut(self.request)

    def _short(self, status: int, headers: bytes, declared: int, body: bytes) -> None:
        """The app gave less than its Content-Length: send it, then cut."""
        self.conn.worker.site.error(
            self.request, f"the app sent {len(body)} of {declared} declared bytes"
        )
        self.conn.send_head(self.request, status, headers, declared)
        self.conn.send_data(self.request, body)
        self._cut()

    def _log_error(self, text: str) -> None:
        self.conn.worker.site.error(
            self.request, "the app raised an exception:\n" + text.rstrip(), level="error"
        )
