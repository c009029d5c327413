"""Sending part of a file to a client socket: zero copy where possible, never blocking.

uvloop's transports have no native ``sendfile``, and the loop refuses a writer callback
on a socket that a transport owns. So the pump below calls ``os.sendfile`` directly on
the socket only while the transport's own buffer is empty (nothing can be reordered),
and when the kernel's socket buffer is full it hands one chunk to the transport
instead: the transport then waits for the socket to become writable, and tells us
when its buffer is empty again (write-buffer limits of 0/0 for the duration make
``resume_writing`` mean exactly that). Most bytes go by sendfile; at most one chunk per
stall is copied.

With ``sendfile off``, or for a transport without a socket (tests, TLS one day), every
chunk goes through the transport, with the same flow control.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from portico.http.protocol import CLOSED

CHUNK_SIZE = 256 * 1024
SENDFILE_MAX = 4 * 1024 * 1024


class FilePump:
    """Streams ``count`` bytes of ``fd`` from ``offset``, then calls ``done(ok)``.

    Owns ``fd`` and closes it when finished, whatever happens.
    """

    __slots__ = ("_done", "_fd", "_offset", "_remaining", "_socket_fd", "conn", "sent")

    def __init__(
        self,
        conn: Any,
        fd: int,
        offset: int,
        count: int,
        use_sendfile: bool,
        done: Callable[[bool], None],
    ) -> None:
        self.conn = conn
        self._fd = fd
        self._offset = offset
        self._remaining = count
        self.sent = 0  # bytes handed to the kernel or the transport
        self._done = done
        socket_fd = -1
        if use_sendfile:
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                socket_fd = sock.fileno()
        self._socket_fd = socket_fd

    def start(self) -> None:
        # the response head may be held in the outbox: it must go before the file
        self.conn.worker.outbox.flush()
        self.conn.transport.set_write_buffer_limits(high=0, low=0)
        self._pump()

    def _pump(self) -> None:
        conn = self.conn
        transport = conn.transport
        try:
            while self._remaining > 0:
                if conn.state == CLOSED:
                    self._finish(False)
                    return
                if self._socket_fd >= 0 and transport.get_write_buffer_size() == 0:
                    try:
                        sent = os.sendfile(
                            self._socket_fd,
                            self._fd,
                            self._offset,
                            min(self._remaining, SENDFILE_MAX),
                        )
                    except BlockingIOError:
                        sent = -1  # the socket buffer is full: copy one chunk, then wait
                    if sent > 0:
                        self._offset += sent
                        self._remaining -= sent
                        self.sent += sent
                        continue
                    if sent == 0:
                        self._finish(False)  # the file shrank under us
                        return
                chunk = os.pread(self._fd, min(self._remaining, CHUNK_SIZE), self._offset)
                if not chunk:
                    self._finish(False)
                    return
                transport.write(chunk)
                self._offset += len(chunk)
                self._remaining -= len(chunk)
                self.sent += len(chunk)
                if transport.get_write_buffer_size() > 0:
                    conn.when_writable(self._pump)
                    return
        except OSError:
            self._finish(False)
            return
        self._finish(True)

    def _finish(self, ok: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.conn.state != CLOSED:
            self.conn.transport.set_write_buffer_limits()
        self._done(ok)


def send_file(
    conn: Any,
    request: Any,
    status: int,
    headers: bytes,
    fd: int,
    offset: int,
    count: int,
    use_sendfile: bool,
) -> None:
    """Answer with ``count`` bytes of ``fd`` from ``offset`` (the head first), then
    finish the request; closes ``fd``. A client gone mid-way closes the connection."""
    conn.send_head(request, status, headers, count)
    if request.method == "HEAD" or count == 0:
        os.close(fd)
        conn.finish(request)
        return

    def done(ok: bool) -> None:
        request.body_bytes_sent += pump.sent
        request.bytes_sent += pump.sent
        if not ok:
            request.keep_alive = False
        conn.finish(request)
        if not ok:
            conn.close()

    pump = FilePump(conn, fd, offset, count, use_sendfile, done)
    pump.start()
