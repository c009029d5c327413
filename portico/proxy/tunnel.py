"""After ``101 Switching Protocols``: bytes both ways, unchanged, with backpressure.

The client connection stops parsing HTTP (``HttpConnection.start_tunnel``) and the
upstream connection stops parsing responses; each side's reads are written to the other,
and a side that cannot keep up pauses the other's reading. The tunnel closes both sides
when either closes, or when neither has sent anything for ``proxy_read_timeout``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portico.http.protocol import HttpConnection
    from portico.http.request import Request
    from portico.upstream.connection import UpstreamConnection


class Tunnel:
    __slots__ = ("client", "headers", "idle_timeout", "request", "upgrade", "upstream")

    def __init__(
        self,
        client: HttpConnection,
        request: Request,
        upstream: UpstreamConnection,
        headers: bytes,
        upgrade: str,
        idle_timeout: float,
    ) -> None:
        self.client = client
        self.request = request
        self.upstream = upstream
        self.headers = headers
        self.upgrade = upgrade
        self.idle_timeout = idle_timeout

    def start(self) -> None:
        upstream = self.upstream
        leftover = upstream.reader.upgrade_data
        upstream.start_tunnel(self)
        headers = (
            self.headers
            + b"Upgrade: "
            + self.upgrade.encode("latin-1")
            + b"\r\nConnection: upgrade\r\n"
        )
        early = self.client.start_tunnel(self.request, headers, self)
        if leftover:
            self.to_client(leftover)
        if early:
            self.to_upstream(early)

    def to_upstream(self, data: bytes) -> None:
        upstream = self.upstream
        upstream.write(data)
        upstream.set_deadline("tunnel", self.idle_timeout)
        self.client.set_tunnel_deadline(self.idle_timeout)
        if upstream.write_paused:
            client = self.client
            request = self.request
            client.hold_reading(request, True)
            upstream.when_writable(lambda: client.hold_reading(request, False))

    def to_client(self, data: bytes) -> None:
        client = self.client
        client.write(data)
        client.set_tunnel_deadline(self.idle_timeout)
        self.upstream.set_deadline("tunnel", self.idle_timeout)
        if client.write_paused:
            upstream = self.upstream
            upstream.pause_reading()
            client.when_writable(upstream.resume_reading)

    def close(self) -> None:
        self.upstream.close()
        self.client.close()
