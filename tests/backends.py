"""A small, real HTTP/1.1 backend for the proxy tests, on 127.0.0.1.

It speaks HTTP over plain sockets (one thread per connection) so that it can misbehave on
purpose, and it counts what it sees so that a test can ask who got what. Run it in the
test process (``Backend("a").start()``) or as a process of its own, which a test can kill
(``spawn("a")``, or ``python -m tests.backends --port N --name a [--delay-ms N]``; it
prints ``listening PORT`` once it accepts connections).

Every answer carries ``X-Backend: NAME``. Routes (the query is optional everywhere):

==========================  ===========================================================
``/status/NNN[?cl=N]``      answers status NNN (204 and 304 without a body; ``cl`` adds a
                            ``Content-Length`` to a 304, as after a conditional GET)
``/slow?ms=N``              waits N ms, then answers like any other path
``/hang``                   reads the request and never answers (until the peer closes)
``/drop``                   reads the request and closes without an answer
``/cut``                    promises 100000 bytes, sends 1000, closes
``/bytes?n=N[&chunked=1]``  N bytes of :func:`pattern`, with Content-Length, chunked, or
``[&close=1]``              (``close``) as HTTP/1.0 delimited by the close
``/headers[?split=1]``      an answer with hop-by-hop, hidden and ordinary headers (with
                            ``split``, a ``Connection: close`` goes on a second line)
``.../redirect?to=URL``     302 with ``Location: URL`` and ``Refresh: 0; url=URL``
``/__stats``                the counters as JSON (not counted themselves)
``Upgrade`` requests        ``101``, then every byte is echoed back until the peer closes
anything else               JSON: the request line, headers, body size and sha256
==========================  ===========================================================

The body of every request is read (Content-Length or chunked) and hashed as it arrives,
so uploads of any size cost no memory. Options make every answer misbehave: ``delay``
(seconds before each answer), ``status`` (answer every request with it), ``drop`` (close
every request unanswered), ``requests_per_connection`` (after N answers on a connection,
close it when the next request comes, as a server whose keep-alive timer fired just as
the request arrived), ``idle_close`` (close a kept-alive connection idle that long).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import parse_qs

BLOCK_SIZE = 64 * 1024
POLL = 0.1  # seconds between checks of the stop flag while a socket is quiet
MAX_WAIT = 30.0  # no wait of a backend thread lasts longer than this
ECHO_BODY_LIMIT = 64 * 1024


@cache
def _block() -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(BLOCK_SIZE))


def pattern(n: int) -> bytes:
    """The first ``n`` bytes of the body ``/bytes?n=...`` sends (small ``n`` only)."""
    block = _block()
    return (block * (n // BLOCK_SIZE + 1))[:n]


def pattern_blocks(n: int):  # type: ignore[no-untyped-def]
    """The same bytes, as pieces of at most 64 KiB (for any ``n``)."""
    block = memoryview(_block())
    while n > 0:
        piece = block[: min(n, BLOCK_SIZE)]
        n -= len(piece)
        yield piece


@cache
def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_blocks(n):
        digest.update(piece)
    return digest.hexdigest()


@dataclass
class Stats:
    """What a backend saw. Counters only grow; ``requests_seen`` keeps the last 50."""

    connections: int = 0  # TCP connections accepted
    requests: int = 0  # request heads read (including unanswered ones)
    answered: int = 0
    active: int = 0  # requests read and not yet answered
    dropped: int = 0  # requests closed unanswered on purpose
    aborted: int = 0  # answers the peer stopped reading (reset or closed mid-body)
    closed_by_peer: int = 0  # connections the peer closed (EOF) between or in requests
    sent_bytes: int = 0  # body bytes of /bytes answers written so far
    tunnel_bytes: int = 0  # bytes received in Upgrade tunnels (echoed back)
    requests_seen: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "requests_seen"}


class _Closed(Exception):
    """The peer closed, or the backend is stopping."""


class _Reader:
    """Buffered reads from one connection, each bounded and interruptible by ``stop``."""

    def __init__(self, sock: socket.socket, backend: Backend) -> None:
        self.sock = sock
        self.backend = backend
        self.buffer = b""

    def fill(self, idle_limit: float = MAX_WAIT) -> None:
        deadline = time.monotonic() + idle_limit
        while not self.backend.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Closed("idle")
            self.sock.settimeout(min(POLL, remaining))
            try:
                data = self.sock.recv(BLOCK_SIZE)
            except TimeoutError:
                continue
            except OSError as e:
                raise _Closed(str(e)) from None
            if not data:
                raise _Closed("eof")
            self.buffer += data
            return
        raise _Closed("stopping")

    def until(self, marker: bytes, idle_limit: float = MAX_WAIT) -> bytes:
        while marker not in self.buffer:
            if len(self.buffer) > 1024 * 1024:
                raise _Closed("head too big")
            self.fill(idle_limit)
        data, _, self.buffer = self.buffer.partition(marker)
        return data

    def exactly(self, n: int, sink) -> None:  # type: ignore[no-untyped-def]
        while n > 0:
            if not self.buffer:
                self.fill()
            piece = self.buffer[:n]
            self.buffer = self.buffer[len(piece) :]
            n -= len(piece)
            sink(piece)


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    path: str
    query: dict[str, str]
    body_size: int = 0
    body_sha256: str = ""
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name]
        return ", ".join(values) if values else None


class Backend:
    """One backend server; ``start()`` listens on ``host:port`` (0: any free port)."""

    def __init__(
        self,
        name: str = "a",
        host: str = "127.0.0.1",
        port: int = 0,
        delay: float = 0.0,
        status: int | None = None,
        drop: bool = False,
        requests_per_connection: int | None = None,
        idle_close: float | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.delay = delay
        self.status = status
        self.drop = drop
        self.requests_per_connection = requests_per_connection
        self.idle_close = idle_close
        self.stats = Stats()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self.accept_thread: threading.Thread | None = None
        self.connections: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Backend:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(POLL)
        self.port = listener.getsockname()[1]
        self.listener = listener
        self.stopping.clear()
        self.accept_thread = threading.Thread(
            target=self._accept_loop, name=f"backend-{self.name}", daemon=True
        )
        self.accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection (the peer sees them close)."""
        self.stopping.set()
        if self.accept_thread is not None:
            self.accept_thread.join(5)
            self.accept_thread = None
        with self.lock:
            connections = list(self.connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)
        self.threads = [t for t in self.threads if t.is_alive()]

    def count(self, **increments: int) -> None:
        with self.lock:
            for key, value in increments.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)

    def wait_for(self, condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
        """Poll ``condition(stats)`` until true or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if condition(self.stats):
                    return True
            time.sleep(0.01)
        with self.lock:
            return bool(condition(self.stats))

    # -- serving -------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self.listener
        assert listener is not None
        try:
            while not self.stopping.is_set():
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self.count(connections=1)
                with self.lock:
                    self.connections.add(sock)
                thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self.threads = [t for t in self.threads if t.is_alive()]
                self.threads.append(thread)
                thread.start()
        finally:
            listener.close()

    def _serve(self, sock: socket.socket) -> None:
        reader = _Reader(sock, self)
        served = 0
        try:
            while True:
                idle = self.idle_close if (served and self.idle_close) else MAX_WAIT
                try:
                    head = reader.until(b"\r\n\r\n", idle_limit=idle)
                except _Closed as e:
                    if str(e) == "eof":
                        self.count(closed_by_peer=1)
                    return
                request = self._parse(head)
                if request is None:
                    return
                self.count(requests=1)
                if self.requests_per_connection is not None and (
                    served >= self.requests_per_connection
                ):
                    self.count(dropped=1)
                    return
                self._read_body(reader, request)
                with self.lock:
                    self.stats.requests_seen = [
                        *self.stats.requests_seen[-49:],
                        {
                            "method": request.method,
                            "target": request.target,
                            "headers": request.headers,
                            "body_size": request.body_size,
                        },
                    ]
                self.count(active=1)
                try:
                    keep = self._answer(sock, reader, request)
                finally:
                    self.count(active=-1)
                served += 1
                if not keep:
                    return
        except _Closed:
            self.count(closed_by_peer=1)
        except OSError:
            self.count(aborted=1)
        finally:
            with self.lock:
                self.connections.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    @staticmethod
    def _parse(head: bytes) -> Request | None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        method, target, version = parts
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        path, _, query = target.partition("?")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        return Request(method, target, version, headers, path, params)

    def _read_body(self, reader: _Reader, request: Request) -> None:
        digest = hashlib.sha256()
        kept: list[bytes] = []

        def sink(piece: bytes) -> None:
            digest.update(piece)
            request.body_size += len(piece)
            if request.body_size <= ECHO_BODY_LIMIT:
                kept.append(piece)

        if "chunked" in (request.header("transfer-encoding") or "").lower():
            while True:
                size_line = reader.until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while reader.until(b"\r\n"):  # trailers, up to the empty line
                        pass
                    break
                reader.exactly(size, sink)
                reader.until(b"\r\n")
        else:
            length = int(request.header("content-length") or 0)
            if length and (request.header("expect") or "").lower() == "100-continue":
                reader.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            reader.exactly(length, sink)
        request.body_sha256 = digest.hexdigest()
        request.body = b"".join(kept)

    def _keep_alive(self, request: Request) -> bool:
        connection = (request.header("connection") or "").lower()
        if request.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def _send(
        self,
        sock: socket.socket,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        keep: bool,
        head_only: bool = False,
        split_connection: bool = False,
    ) -> bool:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Other')}", f"X-Backend: {self.name}"]
        lines += [f"{n}: {v}" for n, v in headers]
        if status not in (204, 304) and not any(n.lower() == "content-length" for n, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        if not keep:
            connection = [i for i, (n, _) in enumerate(headers) if n.lower() == "connection"]
            if connection and not split_connection:
                i = connection[0] + 2  # after the status line and X-Backend
                lines[i] += ", close"
            else:
                lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head_only and status not in (204, 304):
            data += body
        sock.sendall(data)
        self.count(answered=1)
        return keep

    def _answer(self, sock: socket.socket, reader: _Reader, request: Request) -> bool:
        path, query = request.path, request.query
        sock.settimeout(MAX_WAIT)  # for the writes; reads set their own
        keep = self._keep_alive(request)
        head_only = request.method == "HEAD"
        if path == "/__stats":
            with self.lock:
                body = json.dumps(self.stats.as_dict()).encode()
            return self._send(sock, 200, [("Content-Type", "application/json")], body, keep)
        if self.drop or path == "/drop":
            self.count(dropped=1)
            return False
        if self.delay:
            time.sleep(self.delay)
        if path == "/slow":
            time.sleep(int(query.get("ms", "100")) / 1000)
        if self.status is not None:
            return self._send(sock, self.status, [], self.name.encode(), keep, head_only)
        if request.header("upgrade") is not None:
            return self._tunnel(sock, reader, request)
        if path == "/hang" or path.startswith("/hang/"):
            with contextlib.suppress(_Closed):
                while True:
                    reader.fill()
            return False
        if path.endswith("/redirect"):
            # a redirect to ?to= in Location and Refresh, as an app that builds
            # absolute URLs from the Host it was sent
            to = query.get("to", "/")
            headers = [("Location", to), ("Refresh", f"0; url={to}")]
            return self._send(sock, 302, headers, b"", keep, head_only)
        if path.startswith("/status/"):
            status = int(path[len("/status/") :])
            headers = [("Content-Type", "text/plain")]
            if status == 304:
                headers = [("ETag", '"v1"')]
                if "cl" in query:
                    headers.append(("Content-Length", query["cl"]))
            return self._send(sock, status, headers, self.name.encode(), keep, head_only)
        if path == "/cut":
            head = f"HTTP/1.1 200 OK\r\nX-Backend: {self.name}\r\nContent-Length: 100000\r\n\r\n"
            sock.sendall(head.encode() + b"x" * 1000)
            return False
        if path == "/bytes":
            return self._bytes(sock, request, keep)
        if path.startswith("/headers"):
            headers = [
                ("Server", "backend/1.0"),
                ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"),
                ("Connection", "keep-alive, X-Resp-Hop"),
                ("X-Resp-Hop", "gone"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "X-Checksum"),
                ("X-Secret", "s3cret"),
                ("X-Pad", "avoid browser bug"),
                ("X-Accel-Buffering", "no"),
                ("X-Kept", "yes"),
                ("Content-Type", "text/plain"),
            ]
            split = query.get("split") == "1"  # "Connection: close" on a line of its own
            return self._send(sock, 200, headers, b"headers", keep, head_only, split)
        body = json.dumps(
            {
                "backend": self.name,
                "method": request.method,
                "target": request.target,
                "version": request.version,
                "headers": request.headers,
                "body_size": request.body_size,
                "body_sha256": request.body_sha256,
                "body": request.body.decode("latin-1"),
            }
        ).encode()
        return self._send(sock, 200, [("Content-Type", "application/json")], body, keep, head_only)

    def _bytes(self, sock: socket.socket, request: Request, keep: bool) -> bool:
        n = int(request.query.get("n", "0"))
        chunked = request.query.get("chunked") == "1"
        close = request.query.get("close") == "1"
        if close:
            head = f"HTTP/1.0 200 OK\r\nX-Backend: {self.name}\r\n\r\n"
            keep = False
        elif chunked:
            head = f"HTTP/1.1 200 OK\r\nX-Backend: {self.name}\r\nTransfer-Encoding: chunked\r\n"
            head += "" if keep else "Connection: close\r\n"
            head += "\r\n"
        else:
            head = f"HTTP/1.1 200 OK\r\nX-Backend: {self.name}\r\nContent-Length: {n}\r\n"
            head += "" if keep else "Connection: close\r\n"
            head += "\r\n"
        sock.sendall(head.encode())
        if request.method != "HEAD":
            for piece in pattern_blocks(n):
                if self.stopping.is_set():
                    return False
                if chunked:
                    sock.sendall(b"%x\r\n" % len(piece))
                    sock.sendall(piece)
                    sock.sendall(b"\r\n")
                else:
                    sock.sendall(piece)
                self.count(sent_bytes=len(piece))
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        self.count(answered=1)
        return keep

    def _tunnel(self, sock: socket.socket, reader: _Reader, request: Request) -> bool:
        upgrade = request.header("upgrade") or ""
        sock.sendall(
            (
                f"HTTP/1.1 101 Switching Protocols\r\nX-Backend: {self.name}\r\n"
                f"Upgrade: {upgrade}\r\nConnection: Upgrade\r\n\r\n"
            ).encode("latin-1")
        )
        self.count(answered=1)
        try:
            while True:
                if not reader.buffer:
                    reader.fill()
                data, reader.buffer = reader.buffer, b""
                self.count(tunnel_bytes=len(data))
                sock.settimeout(MAX_WAIT)
                sock.sendall(data)
        except _Closed:
            self.count(closed_by_peer=1)
        return False


_REASONS = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# -- as a process of its own ---------------------------------------------------------


class BackendProcess:
    """``python -m tests.backends`` started by :func:`spawn`; ``stop()`` kills it."""

    def __init__(self, process: subprocess.Popen[bytes], name: str, port: int) -> None:
        self.process = process
        self.name = name
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"GET /__stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def spawn(name: str, port: int = 0, delay: float = 0.0, timeout: float = 10.0) -> BackendProcess:
    """Start a backend process and wait until it listens."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "tests.backends", "--name", name, "--port", str(port)]
    if delay:
        args += ["--delay-ms", str(int(delay * 1000))]
    process = subprocess.Popen(
        args, cwd=root, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else b""
    if not line.startswith(b"listening "):
        process.kill()
        process.wait(5)
        process.stdout.close()
        raise RuntimeError(f"backend {name} did not start: {line!r}")
    return BackendProcess(process, name, int(line.split()[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="a")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--status", type=int, default=None)
    args = parser.parse_args(argv)
    backend = Backend(
        args.name, args.host, args.port, delay=args.delay_ms / 1000, status=args.status
    ).start()
    print(f"listening {backend.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    backend.stop()


if __name__ == "__main__":
    main()
