"""A load client that behaves like urllib3 and browsers, for the 7x24 tests.

Each thread keeps one keep-alive connection and sends requests one after another. HTTP
lets a server close an idle keep-alive connection at any moment, so a request that
fails on a *reused* connection before any byte of the answer arrived is retried once
on a new connection, as urllib3 does. Everything else is a failure: a refused or reset
new connection, a truncated answer, a status other than the expected one, a timeout.

Bounded in count and time: ``run`` stops at ``max_requests`` per thread or when
``stop`` is set, and every socket operation has a timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.conftest import parse_head


class _RetryableError(Exception):
    """Failed on a reused connection before any byte of the answer."""


@dataclass
class Results:
    ok: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: dict[str, bytes] = field(default_factory=dict)  # last body per path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)


def _read_answer(sock: socket.socket, head_only: bool = False) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive); raises _RetryableError if nothing arrived at all."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            if not data:
                raise _RetryableError("closed before any byte")
            raise ConnectionError(f"closed mid-head: {data[:100]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    keep_alive = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(min(1 << 20, length - len(rest)))
            if not chunk:
                raise ConnectionError(f"body truncated at {len(rest)} of {length}")
            rest += chunk
        return status, rest[:length], keep_alive
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("chunked body truncated")
                rest += chunk
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("chunked body truncated")
                rest += chunk
            if size == 0:
                return status, body, keep_alive
            body += rest[:size]
            rest = rest[size + 2 :]
    return status, rest, False


class LoadClient:
    def __init__(
        self,
        port: int,
        paths: Sequence[str],
        threads: int = 4,
        max_requests: int = 100_000,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.paths = list(paths)
        self.threads = threads
        self.max_requests = max_requests
        self.host = host
        self.timeout = timeout
        self.stop = threading.Event()
        self.results = Results()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LoadClient:
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> Results:
        self.stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        self._threads.clear()
        return self.results

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` more requests succeeded (or the time is up)."""
        target = self.results.ok + count
        deadline = time.monotonic() + timeout
        while self.results.ok < target and time.monotonic() < deadline:
            time.sleep(0.01)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _run(self, number: int) -> None:
        results = self.results
        sock: socket.socket | None = None
        reused = False
        sent = 0
        while not self.stop.is_set() and sent < self.max_requests:
            path = self.paths[(number + sent) % len(self.paths)]
            sent += 1
            request = f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
            for attempt in (1, 2):
                try:
                    if sock is None:
                        sock = self._connect()
                        reused = False
                    try:
                        sock.sendall(request)
                    except (BrokenPipeError, ConnectionResetError) as e:
                        raise _RetryableError(str(e)) from None
                    status, body, keep_alive = _read_answer(sock)
                except _RetryableError as e:
                    if sock is not None:
                        sock.close()
                        sock = None
                    if reused and attempt == 1:
                        with results.lock:
                            results.retried += 1
                        continue
                    results.fail(f"{path}: {e} on a new connection")
                    break
                except (OSError, ValueError) as e:
                    if sock is not None:
                        sock.close()
                        sock = None
                    results.fail(f"{path}: {type(e).__name__}: {e}")
                    break
                if status != 200:
                    results.fail(f"{path}: status {status}: {body[:200]!r}")
                else:
                    with results.lock:
                        results.ok += 1
                        results.bodies[path] = body
                if keep_alive:
                    reused = True
                else:
                    assert sock is not None
                    sock.close()
                    sock = None
                break
        if sock is not None:
            sock.close()
