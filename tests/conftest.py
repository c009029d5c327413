"""Fixtures that start real portico processes on 127.0.0.1 and always stop them.

``portico(config)`` writes the config (``{port}``, ``{port2}``... and ``{root}`` are
filled in), starts ``python -m portico -c FILE`` and waits until every port accepts.
The process is stopped (TERM, then KILL after a bound) when the test ends, and its
error log is printed if the test failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.backends import Backend

START_TIMEOUT = 10.0
# what asyncio/uvloop print when an exception escapes a protocol or a callback
_LOOP_ERRORS = re.compile(
    r"Fatal error: protocol|Exception in callback|Task exception was never retrieved|"
    r"Fatal error on transport|Unhandled error in exception handler"
)
STOP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = START_TIMEOUT,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"portico exited with {process.returncode} before listening")
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect((host, port))
                return
            except OSError:
                time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class Portico:
    """A running ``portico -c FILE`` process."""

    def __init__(
        self,
        directory: Path,
        config: str,
        ports: dict[str, int],
        extra_args: list[str] | None = None,
        wait: bool = True,
    ) -> None:
        self.directory = directory
        self.ports = ports
        self.port = ports["port"]
        self.config_path = directory / "portico.conf"
        self.config_path.write_text(config)
        self.log_path = directory / "portico.stderr"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "portico", "-c", str(self.config_path), *(extra_args or [])],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            start_new_session=True,
        )
        if wait:
            for name, port in ports.items():
                if name.startswith("port"):
                    wait_for_port(port, process=self.process)
            # the master listens before it forks: a connection is accepted into the
            # backlog already, but a test that asks for the worker's pid needs it
            # forked (bounded: a worker that cannot start is the test's to see)
            deadline = time.monotonic() + 5.0
            while not self.worker_pids() and time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        """Send a signal to the master."""
        self.process.send_signal(sig)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        # workers are in the master's session: make sure none outlives the test
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        return self.process.returncode


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """Start in-process backends (tests/backends.py); all stop when the test ends."""
    started: list[Backend] = []

    def start(name: str = "a", **options: object) -> Backend:
        backend = Backend(name, **options).start()  # type: ignore[arg-type]
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def portico(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Portico]]:
    started: list[Portico] = []

    def start(
        config: str,
        ports: int = 1,
        wait: bool = True,
        extra_args: list[str] | None = None,
        **values: object,
    ) -> Portico:
        directory = tmp_path / f"portico{len(started)}"
        directory.mkdir()
        names = {("port" if i == 0 else f"port{i + 1}"): free_port() for i in range(ports)}
        text = config.format(**names, root=tmp_path, dir=directory, **values)
        server = Portico(directory, text, names, extra_args, wait)
        started.append(server)
        return server

    yield start
    failed = getattr(request.node, "rep_call", None)
    broken = []
    for server in started:
        server.stop()
        log = server.log()
        if failed is not None and failed.failed:
            sys.stderr.write(f"--- portico log ({server.config_path}) ---\n{log}\n")
        broken.extend(line for line in log.splitlines() if _LOOP_ERRORS.search(line))
    # an exception that escaped into the event loop is a bug, whatever the test checked
    assert not broken, f"the event loop reported errors: {broken[:5]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


def raw_request(
    port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1", shutdown: bool = False
) -> bytes:
    """Send bytes, read until the server closes (or ``timeout``), return all it sent."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        return read_until_close(s, timeout)


def read_until_close(s: socket.socket, timeout: float = 5.0) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        s.settimeout(remaining)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(s: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one response with a Content-Length (or none, for bodiless ones)."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """A response head (without its blank line): the status, and lowercase headers."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    return status, headers, body
