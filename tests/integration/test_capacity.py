"""Many connections, slow clients and running out of descriptors: nothing crashes,
nobody waits forever, everyone else is still answered quickly."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import read_response


def probe_latencies(port: int, count: int, pause: float = 0.02) -> list[float]:
    """Time ``count`` requests on fresh connections, one after another."""
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body = read_response(s)
        assert (status, body) == (200, b"probe")
        latencies.append(time.monotonic() - started)
        time.sleep(pause)
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def test_descriptors_running_out_delays_new_connections_instead_of_dropping_them(
    portico,  # type: ignore[no-untyped-def]
) -> None:
    server = portico(
        "worker_processes 1;\nworker_rlimit_nofile 64;\nerror_log {dir}/error.log info;\n"
        "events {{ worker_connections 1000; }}\n"
        "http {{ server {{ listen 127.0.0.1:{port} backlog=512;\n"
        '    location / {{ return 200 "ok"; }} }} }}\n'
    )
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(120)]
    try:
        time.sleep(0.5)
        # the worker holds what its descriptors allow; the rest wait in the backlog
        for s in held[:60]:
            s.close()
        answered = 0
        for s in held[60:]:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for s in held[60:]:
            if read_response(s, timeout=10)[0] == 200:
                answered += 1
        assert answered == 60
    finally:
        for s in held:
            s.close()
    log = (Path(server.directory) / "error.log").read_text()
    assert "open files limit (64) nearly reached" in log
    assert "worker_connections exceed open file resource limit: 64" in log
    # logged at most once a second, not once per connection
    assert log.count("nearly reached") <= 5
    assert len(server.worker_pids()) == 1


def test_worker_connections_cap_makes_connections_wait(portico) -> None:  # type: ignore[no-untyped-def]
    server = portico(
        "worker_processes 1;\nerror_log {dir}/error.log info;\n"
        "events {{ worker_connections 10; }}\n"
        "http {{ server {{ listen 127.0.0.1:{port};\n"
        '    location / {{ return 200 "ok"; }} }} }}\n'
    )
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(10)]
    waiting = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        waiting.settimeout(0.5)
        try:
            early = waiting.recv(100)
        except TimeoutError:
            early = b""
        assert early == b""  # not accepted while ten connections are held
        held.pop().close()
        assert read_response(waiting, timeout=5)[0] == 200
    finally:
        waiting.close()
        for s in held:
            s.close()
    assert (
        "10 worker_connections are not enough" in (Path(server.directory) / "error.log").read_text()
    )


def test_slowloris_gets_408_and_does_not_delay_others(portico) -> None:  # type: ignore[no-untyped-def]
    server = portico(
        "worker_processes 1;\nerror_log {dir}/error.log notice;\n"
        "events {{ worker_connections 4096; }}\n"
        "http {{ client_header_timeout 2s; server {{ listen 127.0.0.1:{port};\n"
        '    location / {{ return 200 "probe"; }} }} }}\n'
    )
    count = 200
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(count)]
    stop = threading.Event()

    def dribble() -> None:
        # one byte a second on every connection, never finishing the head
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for i in range(len(request)):
            if stop.is_set():
                return
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(request[i : i + 1])
            stop.wait(1.0)

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # all of them are connected and dribbling
        # probe through the moment the 200 time out together (about 2 s after start)
        latencies = probe_latencies(server.port, 100, pause=0.02)
        assert p99(latencies) < 0.05, f"probe p99 {p99(latencies) * 1000:.1f} ms"
        time.sleep(0.5)
        answers = []
        for s in slow:
            s.settimeout(5)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except OSError:
                pass
            answers.append(data.split(b"\r\n", 1)[0])
        assert answers.count(b"HTTP/1.1 408 Request Timeout") == count
    finally:
        stop.set()
        thread.join(5)
        for s in slow:
            s.close()


def test_idle_connections_are_held_and_released(portico) -> None:  # type: ignore[no-untyped-def]
    # the CI-sized version of bench/connections.py: 2,000 idle keep-alive connections
    # held at once, probes still quick, memory per connection small, released at timeout
    server = portico(
        "worker_processes 1;\nerror_log {dir}/error.log notice;\n"
        "events {{ worker_connections 8192; }}\n"
        "http {{ keepalive_timeout 3s; client_header_timeout 3s;\n"
        "  server {{ listen 127.0.0.1:{port} backlog=4096;\n"
        '    location / {{ return 200 "probe"; }} }} }}\n'
    )
    (worker,) = server.worker_pids()
    before = rss_kb(worker)
    count = 2000
    held = []
    for _i in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # one request, then idle
        held.append(s)
    for s in held:
        assert read_response(s)[0] == 200
    try:
        latencies = probe_latencies(server.port, 50)
        assert p99(latencies) < 0.05
        grown = rss_kb(worker) - before
        per_connection = grown * 1024 / count
        assert per_connection < 10 * 1024, f"{per_connection:.0f} bytes per idle connection"
        # keepalive_timeout closes them all
        time.sleep(4.0)
        closed = 0
        for s in held:
            s.settimeout(2)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except OSError:
                closed += 1
        assert closed == count
    finally:
        for s in held:
            s.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_is_closed_at_send_timeout(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    www = tmp_path / "www"
    www.mkdir()
    (www / "big.bin").write_bytes(b"x" * (32 * 1024 * 1024))
    server = portico(
        "worker_processes 1;\nerror_log {dir}/error.log info;\nevents {{ }}\n"
        "http {{ send_timeout 1s; server {{ listen 127.0.0.1:{port}; root {root}/www; }} }}"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(3.0)  # read nothing: the server's buffers fill, then it gives up
        received = 0
        s.settimeout(5)
        while chunk := s.recv(1 << 20):
            received += len(chunk)
    assert 0 < received < 32 * 1024 * 1024  # cut short, and the connection closed
    assert "client timed out reading" in (Path(server.directory) / "error.log").read_text()


def test_a_slow_request_body_gets_408(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bodyapp.py").write_text(
        "def app(environ, start_response):\n"
        "    body = environ['wsgi.input'].read()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [body]\n"
    )
    server = portico(
        "worker_processes 1;\nerror_log {dir}/error.log info;\nevents {{ }}\n"
        "http {{ client_body_timeout 1s; server {{ listen 127.0.0.1:{port};\n"
        "  location / {{ wsgi_path {root}; wsgi bodyapp:app; }} }} }}"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        status, headers, _ = read_response(s, timeout=10)
        waited = time.monotonic() - started
    assert status == 408 and headers["connection"] == "close"
    assert 0.7 <= waited <= 3.0


def test_workers_run_as_the_configured_user(portico) -> None:  # type: ignore[no-untyped-def]
    import pwd

    if os.getuid() != 0:
        import pytest

        pytest.skip("only root can change user")
    nobody = pwd.getpwnam("nobody")
    server = portico(
        "user nobody;\nworker_processes 1;\nevents {{ }}\n"
        'http {{ server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}'
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(s)[0] == 200  # the worker is up (and answers as nobody)
    (worker,) = server.worker_pids()
    uid_line = next(
        line
        for line in Path(f"/proc/{worker}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
    master_uid = next(
        line
        for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    ).split()[1]
    assert master_uid == "0"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(s)[0] == 200


REVIEW_APP = """
import sys

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/inject":
        start_response("200 OK", [("X-A\\r\\nSet-Cookie", "evil=1")])
        return [b"no"]
    if path == "/exit":
        sys.exit(3)
    if path == "/not-modified":
        start_response("304 Not Modified", [("Content-Length", "1234")])
        return [b""]
    if path.endswith("/noread"):
        start_response("401 Unauthorized", [("Content-Type", "text/plain")])
        return [b"go away"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fine"]
"""


@pytest.fixture
def review_app(tmp_path: Path, portico):  # type: ignore[no-untyped-def]
    (tmp_path / "reviewapp.py").write_text(REVIEW_APP)
    return portico(
        "worker_processes 1;\nerror_log {dir}/error.log info;\nevents {{ }}\n"
        "http {{ client_max_body_size 10m; server {{ listen 127.0.0.1:{port};\n"
        "  location / {{ wsgi_path {root}; wsgi reviewapp:app; }}\n"
        "  location /stream/ {{ wsgi_path {root}; wsgi_request_buffering off;\n"
        "      wsgi reviewapp:app; }} }} }}"
    )


def one(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return read_response(s)


def test_an_app_header_name_cannot_split_the_response(review_app) -> None:  # type: ignore[no-untyped-def]
    status, headers, _ = one(review_app.port, b"GET /inject HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500 and "set-cookie" not in headers


def test_an_app_that_exits_gets_500_not_silence(review_app) -> None:  # type: ignore[no-untyped-def]
    status, _, _ = one(review_app.port, b"GET /exit HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500


def test_a_304_from_an_app_keeps_the_connection(review_app) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", review_app.port), timeout=10) as s:
        s.sendall(b"GET /not-modified HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 304
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[2] == b"fine"


def test_an_app_that_does_not_read_the_body_lets_the_next_request_through(review_app) -> None:  # type: ignore[no-untyped-def]
    # streaming input: the app answers without reading a 2 MB body; the client sends
    # all of it and then a second request on the same connection
    body = b"x" * (2 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", review_app.port), timeout=10) as s:
        s.sendall(
            b"POST /stream/noread HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        sender = threading.Thread(target=s.sendall, args=(body,), daemon=True)
        sender.start()
        assert read_response(s)[0] == 401
        sender.join(10)
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, timeout=5)[2] == b"fine"


def test_bad_chunk_framing_in_a_body_being_read_is_answered_at_once(review_app) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", review_app.port), timeout=10) as s:
        s.sendall(
            b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        time.sleep(0.2)
        started = time.monotonic()
        s.sendall(b"ZZ\r\n")
        status, headers, _ = read_response(s)
        assert status == 400 and headers["connection"] == "close"
        assert time.monotonic() - started < 1.0
