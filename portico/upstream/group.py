"""An upstream group in one worker: its balancer, its peers' addresses, its idle pool.

The balancer (balancers.py, pure) decides which peer gets an attempt; this object adds
what needs I/O: opening connections and keeping idle ones for reuse (``keepalive N``:
at most N idle connections per group per worker, the most recently used first, as
nginx's cache).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from portico.config.directives import parse_address
from portico.config.model import UpstreamConf
from portico.timeouts import Wheel
from portico.upstream.balancers import Peer, make_balancer
from portico.upstream.connection import UpstreamConnection

if TYPE_CHECKING:
    from portico.http.request import Request


class UpstreamGroup:
    def __init__(
        self,
        conf: UpstreamConf,
        wheel: Wheel,
        rng: random.Random | None = None,
        worker: Any = None,
    ) -> None:
        self.worker = worker  # told of every connection opened and lost (capacity)
        self.name = conf.name
        self.wheel = wheel
        self.balancer = make_balancer(
            conf.method.name, conf.peers, time.monotonic, rng or random.Random()
        )
        self.method = conf.method.name
        self.hash_key = conf.method.key
        # what the method hashes, chosen once (None: it hashes nothing)
        self._key: Callable[[Request], bytes] | None = (
            self._client_address
            if self.method == "ip_hash"
            else self._hash_value
            if self.hash_key is not None
            else None
        )
        self.keepalive = conf.keepalive
        # requests a connection may carry; without a pool, none past the first
        self.keepalive_requests = conf.keepalive_requests if self.keepalive > 0 else 0
        self.keepalive_timeout = conf.keepalive_timeout
        # the idle pool: in order of release (the least recently used first, for the
        # keepalive limit), and per peer (the most recently used last, for reuse)
        self.idle: dict[UpstreamConnection, None] = {}
        # every connection of the group that is open, but the tunnels (a reload lets
        # those run their course): what close() closes
        self.open: set[UpstreamConnection] = set()
        peers = (*self.balancer.peers, *self.balancer.backups)
        self._idle_by_peer: dict[Peer, list[UpstreamConnection]] = {peer: [] for peer in peers}
        self.addresses: dict[Peer, tuple[str, str, int]] = {
            peer: _address(peer.address) for peer in peers
        }

    # -- choosing ----------------------------------------------------------------------

    def _client_address(self, request: Request) -> bytes:
        """ip_hash's key: the client's address as inet_pton gives it."""
        addr = request.conn.remote_addr
        try:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            return socket.inet_pton(family, addr)
        except OSError:
            return addr.encode()

    def _hash_value(self, request: Request) -> bytes:
        """hash KEY's key: the rendered template."""
        assert self.hash_key is not None
        return self.hash_key.render(request).encode("utf-8", "surrogateescape")

    def pick(self, request: Request, tried: Collection[Peer]) -> Peer | None:
        key = self._key
        return self.balancer.pick(key(request) if key is not None else b"", tried)

    def has_untried(self, tried: Collection[Peer]) -> bool:
        """Whether a peer that was not tried could still take an attempt."""
        return self.balancer.has_untried(tried)

    # -- connections -----------------------------------------------------------------

    def idle_connection(self, peer: Peer) -> UpstreamConnection | None:
        stack = self._idle_by_peer[peer]
        if stack:
            # a connection leaves the pool as it closes (forget): this one is open
            conn = stack.pop()
            del self.idle[conn]
            return conn
        return None

    def connect(
        self,
        peer: Peer,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[UpstreamConnection | None, BaseException | None], None],
    ) -> asyncio.Future[Any]:
        """Open a connection to ``peer``; ``done(conn, None)`` or ``done(None, error)``."""
        family, host, port = self.addresses[peer]

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, peer)

        if family == "unix":
            coro = loop.create_unix_connection(factory, host)
        else:
            coro = loop.create_connection(factory, host, port)
        future = asyncio.ensure_future(coro)

        def finished(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                done(None, TimeoutError())
                return
            error = f.exception()
            if error is not None:
                done(None, error)
                return
            _, conn = f.result()
            done(conn, None)

        future.add_done_callback(finished)
        return future

    def release(self, conn: UpstreamConnection) -> None:
        """An exchange is over and the connection can carry another: keep it idle."""
        conn.exchange = None
        if conn.closed:
            return
        if conn.reading_paused:
            conn.resume_reading()  # paused for the last client; the next starts afresh
        if conn.requests >= self.keepalive_requests:
            conn.close()
            return
        if len(self.idle) >= self.keepalive:
            next(iter(self.idle)).close()  # the least recently used one goes (forget)
        conn.set_deadline("idle", self.keepalive_timeout)
        self.idle[conn] = None
        self._idle_by_peer[conn.peer].append(conn)

    def opened(self, conn: UpstreamConnection) -> None:
        self.open.add(conn)
        if self.worker is not None:
            self.worker.upstream_opened()

    def lost(self, conn: UpstreamConnection) -> None:
        if self.worker is not None:
            self.worker.upstream_closed()

    def forget(self, conn: UpstreamConnection) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            del self.idle[conn]
            self._idle_by_peer[conn.peer].remove(conn)

    def close(self) -> None:
        for conn in list(self.open):
            conn.close()


def _address(address: str) -> tuple[str, str, int]:
    host, port, path = parse_address(address, default_port=80)
    if path is not None:
        return "unix", path, 0
    return ("inet6" if ":" in host else "inet"), host or "127.0.0.1", port
