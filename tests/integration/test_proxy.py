"""The reverse proxy end to end: a real portico in front of real backends on 127.0.0.1.

The backends are ``tests.backends.Backend`` servers in this process (they count what
they see and echo the request as JSON); portico runs as its own process. Each test asks
what a client sees, and, where it matters, what the backend saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.backends import Backend, pattern_blocks, pattern_sha256
from tests.conftest import Portico, free_port, read_until_close

TIMEOUT = 5.0
MB = 1024 * 1024


# -- helpers -----------------------------------------------------------------------------


class Response:
    def __init__(self, response: http.client.HTTPResponse, body: bytes) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)  # type: ignore[no-any-return]


def request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str | None = None,
    timeout: float = TIMEOUT,
) -> Response:
    conn = http.client.HTTPConnection(
        "127.0.0.1",
        port,
        timeout=timeout,
        source_address=(source, 0) if source else None,
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Response(response, response.read())
    finally:
        conn.close()


@contextlib.contextmanager
def http_response(sock: socket.socket, method: str = "GET") -> Iterator[http.client.HTTPResponse]:
    """Read a response off a raw socket; the reader is closed whatever happens."""
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
        yield response
    finally:
        response.close()


def read_response(sock: socket.socket, method: str = "GET") -> Response:
    with http_response(sock, method) as response:
        return Response(response, response.read())


def upload(
    port: int, path: str, head: bytes, body: Iterable[bytes], method: str = "POST"
) -> Response:
    """Send a request head, then, a moment later, its body."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"%s %s HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n"
            % (method.encode(), path.encode(), head)
        )
        time.sleep(0.1)
        for piece in body:
            sock.sendall(piece)
        return read_response(sock, method)


def backend_headers(response: Response) -> dict[str, list[str]]:
    """The request headers the echoing backend saw, by lowercase name."""
    seen: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


def raw_exchange(port: int, data: bytes, method: str = "GET") -> Response:
    """Send raw bytes, read one response (any framing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        return read_response(sock, method)


def vm_rss(pid: int, field: str = "VmRSS") -> int:
    """Bytes of a process's resident memory (or its peak, with ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def only_worker(server: Portico) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if len(pids) == 1:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"expected one worker, found {server.worker_pids()}")


class RssSampler:
    """The largest VmRSS of a process seen while the block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = vm_rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, LookupError):
                self.peak = max(self.peak, vm_rss(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, vm_rss(self.pid))


def error_log(server: Portico) -> str:
    path = server.directory / "error.log"
    return path.read_text(errors="replace") if path.exists() else ""


def access_log_lines(server: Portico) -> list[str]:
    server.stop()  # flushes the buffered access log
    return (server.directory / "access.log").read_text().splitlines()


# -- one portico for the stateless tests -------------------------------------------------

CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ }}
http {{
    # max_fails=0: a test that makes the peer fail must not take it out for the next ones
    upstream app {{ server {a} max_fails=0; }}
    upstream app_ka {{ server {a} max_fails=0; keepalive 4; }}
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        proxy_connect_timeout 1s;
        proxy_read_timeout 5s;
        location / {{ proxy_pass http://app; }}
        location /direct/ {{ proxy_pass http://{a}; }}
        location /api/ {{ proxy_pass http://app/v2/; }}
        location /host/ {{ proxy_pass http://app; proxy_set_header Host $host; }}
        location /xff/ {{
            proxy_pass http://app;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
        }}
        location /strip/ {{
            proxy_pass http://app;
            proxy_set_header User-Agent "";
            proxy_set_header X-Static static-value;
        }}
        location /hide/ {{
            proxy_pass http://app/headers/;
            proxy_hide_header X-Secret;
            proxy_pass_header X-Accel-Buffering;
        }}
        location /pass-server/ {{
            proxy_pass http://app/headers/;
            proxy_pass_header Server;
            proxy_pass_header Date;
        }}
        location /ka/ {{ proxy_pass http://app_ka; }}
    }}
}}
"""


class Front:
    def __init__(self, backend: Backend, server: Portico) -> None:
        self.backend = backend
        self.server = server
        self.port = server.port


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    backend = Backend("a").start()
    try:
        directory = tmp_path_factory.mktemp("proxy")
        port = free_port()
        config = CONFIG.format(port=port, dir=directory, a=backend.address)
        server = Portico(directory, config, {"port": port})
        try:
            yield Front(backend, server)
        finally:
            server.stop()
    finally:
        backend.stop()


# -- where requests go and what they look like -------------------------------------------


def test_proxy_pass_to_an_upstream_and_to_an_address(front: Front) -> None:
    response = request(front.port, "/hello?x=1")
    assert response.status == 200
    assert response.header("X-Backend") == "a"
    assert response.json()["target"] == "/hello?x=1"
    assert response.json()["version"] == "HTTP/1.1"
    assert backend_headers(response)["host"] == ["app"]  # $proxy_host of an upstream
    response = request(front.port, "/direct/page")
    assert response.status == 200
    assert response.json()["target"] == "/direct/page"
    assert backend_headers(response)["host"] == [front.backend.address]  # with its port


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ("/api/users", "/v2/users"),
        ("/api/", "/v2/"),
        ("/api/users/42?sort=name&x=%20y", "/v2/users/42?sort=name&x=%20y"),
        ("/api/a%20b", "/v2/a%20b"),
        ("/api/deep/er/path.json?", "/v2/deep/er/path.json"),
    ],
)
def test_proxy_pass_with_a_uri_replaces_the_location_prefix(
    front: Front, sent: str, received: str
) -> None:
    assert request(front.port, sent).json()["target"] == received


@pytest.mark.parametrize(
    "target",
    [
        "/x%2Fy/%7Euser/a%20b?q=%41&r=%2F",
        "/plain/path?a=1&a=2&empty=",
        "/caf%C3%A9/%41%42",
        "/a//b/./c",
    ],
)
def test_proxy_pass_without_a_uri_passes_the_raw_uri(front: Front, target: str) -> None:
    response = raw_exchange(
        front.port, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.status == 200
    assert response.json()["target"] == target


def test_a_uri_in_a_regex_location_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "regex.conf"
    port = free_port()
    path.write_text(
        "events { } http { upstream app { server 127.0.0.1:9; } server {"
        f" listen 127.0.0.1:{port}; location ~ ^/re/ {{ proxy_pass http://app/v2/; }} }} }}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "portico", "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0


def test_host_header_default_and_set(front: Front) -> None:
    assert backend_headers(request(front.port, "/", headers={"Host": "example.test"}))["host"] == [
        "app"
    ]
    seen = backend_headers(request(front.port, "/host/", headers={"Host": "Example.TEST:8080"}))
    assert seen["host"] == ["example.test"]  # $host: lowercase, without the port


def test_x_forwarded_for(front: Front) -> None:
    seen = backend_headers(request(front.port, "/xff/"))
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-real-ip"] == ["127.0.0.1"]
    seen = backend_headers(request(front.port, "/xff/", source="127.0.0.7"))
    assert seen["x-forwarded-for"] == ["127.0.0.7"]
    seen = backend_headers(
        request(front.port, "/xff/", headers={"X-Forwarded-For": "10.1.1.1"}, source="127.0.0.8")
    )
    assert seen["x-forwarded-for"] == ["10.1.1.1, 127.0.0.8"]
    # the client's header is replaced, not repeated
    response = raw_exchange(
        front.port,
        b"GET /xff/ HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.1.1.1\r\n"
        b"X-Forwarded-For: 10.2.2.2\r\nConnection: close\r\n\r\n",
    )
    assert backend_headers(response)["x-forwarded-for"] == ["10.1.1.1, 10.2.2.2, 127.0.0.1"]
    # where no proxy_set_header names it, the client's header passes unchanged
    seen = backend_headers(request(front.port, "/", headers={"X-Forwarded-For": "10.1.1.1"}))
    assert seen["x-forwarded-for"] == ["10.1.1.1"]


def test_proxy_set_header_with_an_empty_value_removes_the_header(front: Front) -> None:
    response = request(
        front.port, "/strip/", headers={"User-Agent": "agent/1", "X-Static": "from client"}
    )
    seen = backend_headers(response)
    assert "user-agent" not in seen
    assert seen["x-static"] == ["static-value"]
    # elsewhere the client's User-Agent goes through
    assert backend_headers(request(front.port, "/", headers={"User-Agent": "agent/1"}))[
        "user-agent"
    ] == ["agent/1"]


def test_hop_by_hop_request_headers_are_not_forwarded(front: Front) -> None:
    response = raw_exchange(
        front.port,
        b"GET /hop HTTP/1.1\r\nHost: t\r\n"
        b"Connection: X-Client-Hop, keep-alive\r\n"
        b"X-Client-Hop: secret\r\n"
        b"Keep-Alive: timeout=300\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"X-End-To-End: kept\r\n\r\n",
    )
    seen = backend_headers(response)
    for name in ("x-client-hop", "keep-alive", "proxy-connection", "te", "trailer"):
        assert name not in seen, name
    assert seen["connection"] == ["close"]  # portico's own, to a group without keepalive
    assert seen["x-end-to-end"] == ["kept"]


def test_hop_by_hop_and_hidden_response_headers_are_not_passed(front: Front) -> None:
    before = time.time()
    response = request(front.port, "/headers")
    assert (response.status, response.body) == (200, b"headers")
    headers = response.headers
    for name in ("X-Resp-Hop", "Keep-Alive", "Proxy-Connection", "Trailer", "X-Pad"):
        assert headers.get(name) is None, name
    assert headers.get("X-Accel-Buffering") is None
    assert headers.get("Connection") in (None, "keep-alive")
    assert headers.get("X-Kept") == "yes"
    assert headers.get("X-Secret") == "s3cret"  # not hidden unless asked
    # the upstream's Server and Date are replaced by portico's
    assert headers.get_all("Server") == [headers["Server"]]
    assert headers["Server"].startswith("portico")
    assert len(headers.get_all("Date")) == 1
    assert parsedate_to_datetime(headers["Date"]).timestamp() >= int(before) - 1


def test_headers_named_in_any_connection_line_are_not_passed(front: Front) -> None:
    # the backend sends "Connection: keep-alive, X-Resp-Hop" and "Connection: close"
    response = request(front.port, "/headers?split=1")
    assert response.status == 200
    assert response.headers.get("X-Resp-Hop") is None


def test_proxy_hide_header_and_proxy_pass_header(front: Front) -> None:
    headers = request(front.port, "/hide/x").headers
    assert headers.get("X-Secret") is None
    assert headers.get("X-Accel-Buffering") == "no"
    assert headers.get("X-Kept") == "yes"


def test_proxy_pass_header_server_replaces_portico_s_own(front: Front) -> None:
    headers = request(front.port, "/pass-server/x").headers
    assert headers.get_all("Server") == ["backend/1.0"]
    assert headers.get_all("Date") == ["Mon, 01 Jan 2001 00:00:00 GMT"]


# -- request bodies ----------------------------------------------------------------------


def test_content_length_upload_reaches_the_backend_intact(front: Front) -> None:
    n = 3 * MB + 17
    response = upload(front.port, "/upload", b"Content-Length: %d\r\n" % n, pattern_blocks(n))
    echo = response.json()
    assert (echo["method"], echo["body_size"]) == ("POST", n)
    assert echo["body_sha256"] == pattern_sha256(n)
    assert backend_headers(response)["content-length"] == [str(n)]


def test_a_large_body_sent_with_the_head_reaches_the_backend(front: Front) -> None:
    n = MB
    body = b"".join(bytes(p) for p in pattern_blocks(n))
    # 2 s: with the bug, the answer would come after proxy_read_timeout (5 s)
    with socket.create_connection(("127.0.0.1", front.port), timeout=2.0) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%b" % (n, body)
        )
        response = read_response(sock, "POST")
        assert response.status == 200
        echo = response.json()
    assert (echo["body_size"], echo["body_sha256"]) == (n, pattern_sha256(n))


def test_chunked_upload_reaches_the_backend_intact(front: Front) -> None:
    pieces = [b"x" * 10, b"y" * 70000, b"z", bytes(range(256)) * 1000]
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"PUT /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        for piece in pieces:
            sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
            time.sleep(0.01)
        sock.sendall(b"0\r\n\r\n")
        echo = read_response(sock, "PUT").json()
    whole = b"".join(pieces)
    assert (echo["body_size"], echo["body_sha256"]) == (
        len(whole),
        hashlib.sha256(whole).hexdigest(),
    )


def test_expect_100_continue_gets_100_then_the_answer(front: Front) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(4096)
            assert chunk, f"closed after {interim!r}"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        assert interim.endswith(b"\r\n\r\n")  # nothing but the 100 before the body is sent
        sock.sendall(b"hello world")
        response = read_response(sock, "POST")
        assert response.status == 200
        echo = response.json()
    assert echo["body"] == "hello world"
    assert "expect" not in {name.lower() for name, _ in echo["headers"]}


def test_a_bad_request_pipelined_behind_a_body_is_answered_after_it(front: Front) -> None:
    # the end of the body and a request with a Host that cannot be one, in one read:
    # the request whose body it was gets its own answer, then the 400, then the close
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.2)  # the exchange has begun, and reads the body
        sock.sendall(b"hello" + b"GET /next HTTP/1.1\r\nHost: a/b\r\n\r\n")
        data = read_until_close(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"400"], data[:300]
    assert b'"body": "hello"' in data


# -- response bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "framing", ["", "&chunked=1", "&close=1"], ids=["content-length", "chunked", "close"]
)
def test_response_bodies_reach_the_client_intact(front: Front, framing: str) -> None:
    n = 5 * MB + 3
    response = request(front.port, f"/bytes?n={n}{framing}")
    assert response.status == 200
    assert len(response.body) == n
    assert hashlib.sha256(response.body).hexdigest() == pattern_sha256(n)


CUT_CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ }}
http {{
    upstream app {{ server {a}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://app; }}
    }}
}}
"""


def get_cut(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n")
        with http_response(sock) as response:
            assert response.status == 200
            with pytest.raises(http.client.IncompleteRead):
                response.read()


def test_a_response_cut_short_is_not_passed_as_complete(portico, backends) -> None:
    server = portico(CUT_CONFIG, a=backends("a").address)
    get_cut(server.port)
    assert "upstream prematurely closed connection while reading upstream" in error_log(server)


def test_a_response_cut_short_does_not_take_the_peer_out(portico, backends) -> None:
    server = portico(CUT_CONFIG, a=backends("a").address)
    get_cut(server.port)
    assert request(server.port, "/after").status == 200


@pytest.mark.parametrize(
    "framing", ["", "&chunked=1", "&close=1"], ids=["content-length", "chunked", "close"]
)
def test_response_bodies_reach_an_http_1_0_client_intact(front: Front, framing: str) -> None:
    n = 300_000
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /bytes?n={n}{framing} HTTP/1.0\r\nHost: t\r\n\r\n".encode())
        data = read_until_close(sock, TIMEOUT)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding" not in head  # an HTTP/1.0 client cannot read chunks
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(n)


def test_head_through_the_proxy(front: Front) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=TIMEOUT)
    try:
        conn.request("HEAD", "/bytes?n=5000")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == "5000"
        assert response.read() == b""
        # the connection is still in step: no stray body bytes before the next answer
        conn.request("GET", "/after-head")
        response = conn.getresponse()
        assert json.loads(response.read())["target"] == "/after-head"
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/status/204", "/status/304", "/status/304?cl=1234"])
def test_bodiless_statuses_through_the_proxy(front: Front, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == int(path[8:11])
        assert response.read() == b""
        assert response.getheader("Transfer-Encoding") is None
        conn.request("GET", "/next")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["target"] == "/next"
    finally:
        conn.close()


# -- keep-alive to the upstream ----------------------------------------------------------

KEEPALIVE_CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ }}
http {{
    upstream ka {{ server {a}; keepalive 4; }}
    upstream plain {{ server {a}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_read_timeout 5s;
        location /ka/ {{ proxy_pass http://ka; }}
        location /ka-post/ {{
            proxy_next_upstream error timeout non_idempotent;
            proxy_pass http://ka;
        }}
        location /plain/ {{ proxy_pass http://plain; }}
    }}
}}
"""


def test_keepalive_reuses_upstream_connections(portico, backends) -> None:
    backend = backends("a")
    server = portico(KEEPALIVE_CONFIG, a=backend.address)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        for i in range(60):
            conn.request("GET", f"/ka/{i}")
            response = conn.getresponse()
            echo = json.loads(response.read())
            assert echo["target"] == f"/ka/{i}"
            assert "connection" not in {n.lower() for n, _ in echo["headers"]}
    finally:
        conn.close()
    assert backend.stats.requests == 60
    assert backend.stats.connections <= 4
    # without keepalive: one connection per request, each told to close
    before = backend.stats.connections
    for i in range(10):
        seen = backend_headers(request(server.port, f"/plain/{i}"))
        assert seen["connection"] == ["close"]
    assert backend.stats.connections - before == 10


def post_on_one_connection(
    port: int, count: int, pause: float, prefix: str = "/ka-post/"
) -> list[tuple[int, str]]:
    """POSTs on one client connection, each body ``pause`` seconds after its head (0:
    in the same write); returns (status, body the backend saw) for each."""
    results = []
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        for i in range(count):
            body = b"body %d" % i
            head = b"POST %s%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (
                prefix.encode(),
                i,
                len(body),
            )
            if pause:
                sock.sendall(head)
                time.sleep(pause)
                sock.sendall(body)
            else:
                sock.sendall(head + body)
            response = read_response(sock, "POST")
            seen = response.json()["body"] if response.status == 200 else ""
            results.append((response.status, seen))
    return results


def test_a_peer_closing_a_kept_alive_connection_costs_the_client_nothing(portico, backends) -> None:
    # the backend answers one request per connection, then closes the connection when
    # the next request arrives on it: what a server whose idle timer fired does
    backend = backends("a", requests_per_connection=1)
    server = portico(KEEPALIVE_CONFIG, a=backend.address)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        for i in range(20):
            conn.request("GET", f"/ka/{i}")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["target"] == f"/ka/{i}"
    finally:
        conn.close()
    assert backend.stats.dropped >= 10  # the reuse was tried, and failed, many times
    # a POST is sent again only where non_idempotent allows it (nginx's rule: the dead
    # connection may have been closed after the peer had read the request)
    results = post_on_one_connection(server.port, 10, pause=0)
    assert results == [(200, f"body {i}") for i in range(10)]
    assert "[error]" not in error_log(server), error_log(server)
    refused = post_on_one_connection(server.port, 2, pause=0, prefix="/ka/")
    assert refused[0] == (502, "")
    assert "upstream prematurely closed connection" in error_log(server)


def test_a_peer_closing_a_kept_alive_connection_during_a_slow_upload(portico, backends) -> None:
    backend = backends("a", requests_per_connection=1)
    server = portico(KEEPALIVE_CONFIG, a=backend.address)
    results = post_on_one_connection(server.port, 3, pause=0.1)
    assert results == [(200, f"body {i}") for i in range(3)]


def test_a_peer_closing_idle_connections_costs_the_client_nothing(portico, backends) -> None:
    backend = backends("a", idle_close=0.05)
    server = portico(KEEPALIVE_CONFIG, a=backend.address)
    for i in range(5):
        assert request(server.port, f"/ka/{i}").status == 200
        time.sleep(0.15)
    assert backend.stats.connections == 5
    assert "[error]" not in error_log(server)


# -- streaming and memory ----------------------------------------------------------------

STREAM_CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ }}
http {{
    client_max_body_size 0;
    upstream app {{ server {a}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_read_timeout 5s;
        proxy_send_timeout 5s;
        location / {{ proxy_pass http://app; }}
    }}
}}
"""
RSS_GROWTH_LIMIT = 20 * MB
BIG = 100 * MB


def warm_up(port: int) -> None:
    for _ in range(3):
        assert request(port, f"/bytes?n={MB}").status == 200
        response = upload(port, "/upload", b"Content-Length: %d\r\n" % MB, [b"x" * MB])
        assert response.status == 200


def test_a_100mb_response_streams_in_bounded_memory(portico, backends) -> None:
    backend = backends("a")
    server = portico(STREAM_CONFIG, a=backend.address)
    worker = only_worker(server)
    warm_up(server.port)
    base, base_peak = vm_rss(worker), vm_rss(worker, "VmHWM")
    digest = hashlib.sha256()
    received = 0
    with (
        RssSampler(worker) as sampler,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
    ):
        sock.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % BIG)
        with http_response(sock) as response:
            assert response.status == 200
            while chunk := response.read(MB):
                digest.update(chunk)
                received += len(chunk)
    assert received == BIG
    assert digest.hexdigest() == pattern_sha256(BIG)
    assert sampler.peak - base < RSS_GROWTH_LIMIT
    assert vm_rss(worker, "VmHWM") - base_peak < RSS_GROWTH_LIMIT


def test_a_100mb_upload_streams_in_bounded_memory(portico, backends) -> None:
    backend = backends("a")
    server = portico(STREAM_CONFIG, a=backend.address)
    worker = only_worker(server)
    warm_up(server.port)
    base, base_peak = vm_rss(worker), vm_rss(worker, "VmHWM")
    with RssSampler(worker) as sampler:
        response = upload(
            server.port, "/upload", b"Content-Length: %d\r\n" % BIG, pattern_blocks(BIG)
        )
        echo = response.json()
    assert (echo["body_size"], echo["body_sha256"]) == (BIG, pattern_sha256(BIG))
    assert sampler.peak - base < RSS_GROWTH_LIMIT
    assert vm_rss(worker, "VmHWM") - base_peak < RSS_GROWTH_LIMIT


def test_a_slow_reader_holds_the_backend_back(portico, backends) -> None:
    backend = backends("a")
    server = portico(STREAM_CONFIG, a=backend.address)
    worker = only_worker(server)
    warm_up(server.port)
    base = vm_rss(worker)
    sent_before = backend.stats.sent_bytes
    with (
        RssSampler(worker) as sampler,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % BIG)
        read = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # about 1 MB/s
            chunk = sock.recv(16 * 1024)
            assert chunk
            read += len(chunk)
            time.sleep(0.015)
        sent = backend.stats.sent_bytes - sent_before
    # without backpressure the backend would have sent all of it in well under 1.5 s
    assert sent < 40 * MB, f"backend sent {sent} bytes to a client that read {read}"
    assert sampler.peak - base < RSS_GROWTH_LIMIT


def test_a_client_leaving_mid_download_closes_the_upstream_connection(portico, backends) -> None:
    backend = backends("a")
    server = portico(STREAM_CONFIG, a=backend.address)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % BIG)
        read = 0
        while read < MB:
            chunk = sock.recv(65536)
            assert chunk
            read += len(chunk)
    assert backend.wait_for(lambda s: s.aborted + s.closed_by_peer >= 1, timeout=5)
    assert backend.stats.sent_bytes < BIG
    assert backend.wait_for(lambda s: s.active == 0, timeout=5)


# -- timeouts and errors -----------------------------------------------------------------

ERRORS_CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ }}
http {{
    upstream dead {{ server 127.0.0.1:{dead}; }}
    upstream slow {{ server {a}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_connect_timeout 3s;
        proxy_read_timeout 1s;
        location /dead/ {{ proxy_pass http://dead; }}
        location /slow/ {{ proxy_pass http://slow/; }}
        location /slow-once/ {{ proxy_pass http://slow/; proxy_next_upstream off; }}
        location /handled/ {{
            proxy_pass http://dead;
            error_page 502 504 = @fallback;
        }}
        location /handled-slow/ {{
            proxy_pass http://slow/hang/;
            proxy_next_upstream off;
            error_page 504 /sorry.html;
        }}
        location /intercept/ {{
            proxy_pass http://slow/status/;
            proxy_intercept_errors on;
            error_page 503 = @fallback;
        }}
        location = /sorry.html {{ return 200 "sorry page"; }}
        location @fallback {{ return 200 "fallback for $uri"; }}
    }}
}}
"""


@pytest.fixture
def errors(portico, backends) -> Portico:
    backend = backends("a")
    return portico(ERRORS_CONFIG, a=backend.address, dead=free_port())


def assert_nginx_error_page(response: Response, status: int) -> None:
    assert response.status == status
    assert response.header("Content-Type") == "text/html"
    # nginx says "504 Gateway Time-out"; RFC 9110's "Gateway Timeout" is as good
    title = {502: "Bad Gateway", 504: "Gateway Time-?out"}[status]
    assert re.search(rf"<title>{status} {title}</title>".encode(), response.body, re.I)
    assert re.search(rf"<h1>{status} {title}</h1>".encode(), response.body, re.I)
    assert len(response.body) < 1024


def test_read_timeout_gives_504_in_about_the_timeout(errors: Portico) -> None:
    started = time.monotonic()
    response = request(errors.port, "/slow-once/hang")
    elapsed = time.monotonic() - started
    assert_nginx_error_page(response, 504)
    assert 0.9 <= elapsed < 2.5
    log = error_log(errors)
    assert "upstream timed out (110: Connection timed out) while reading response header" in log


def test_read_timeout_with_the_default_next_upstream_gives_504(errors: Portico) -> None:
    started = time.monotonic()
    response = request(errors.port, "/slow/hang")
    assert time.monotonic() - started < 2.5
    assert_nginx_error_page(response, 504)


def test_connection_refused_gives_a_fast_502_and_names_the_peer(errors: Portico) -> None:
    started = time.monotonic()
    response = request(errors.port, "/dead/x")
    assert time.monotonic() - started < 1.0  # refused at once, not the 3 s connect timeout
    assert_nginx_error_page(response, 502)
    log = error_log(errors)
    assert "connect() failed (111: Connection refused) while connecting to upstream" in log
    dead = errors.config_path.read_text().split("server 127.0.0.1:")[1].split(";")[0]
    assert f'upstream: "http://127.0.0.1:{dead}/dead/x"' in log


def test_error_page_applies_to_proxy_errors(errors: Portico) -> None:
    response = request(errors.port, "/handled/x")
    assert (response.status, response.body) == (200, b"fallback for /handled/x")
    response = request(errors.port, "/handled-slow/x")
    assert (response.status, response.body) == (504, b"sorry page")


def test_proxy_intercept_errors_sends_listed_statuses_to_error_page(errors: Portico) -> None:
    response = request(errors.port, "/intercept/503")
    assert (response.status, response.body) == (200, b"fallback for /intercept/503")
    assert response.header("X-Backend") is None
    response = request(errors.port, "/intercept/404")  # no error_page for it: passed on
    assert (response.status, response.body, response.header("X-Backend")) == (404, b"a", "a")


def test_connect_timeout_against_a_full_backlog(portico) -> None:
    # A listener that never accepts, with its accept queue full: Linux drops further
    # SYNs, so a connect neither succeeds nor fails until its timeout.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                pass
            else:
                pytest.skip("this kernel accepts connections past a full backlog")
        server = portico(
            "worker_processes 1; error_log {dir}/error.log info; events {{ }} http {{"
            " server {{ listen 127.0.0.1:{port}; proxy_connect_timeout 1s; proxy_next_upstream off;"
            " location / {{ proxy_pass http://127.0.0.1:{stuck}; }} }} }}",
            stuck=port,
        )
        started = time.monotonic()
        response = request(server.port, "/")
        elapsed = time.monotonic() - started
        assert_nginx_error_page(response, 504)
        assert 0.9 <= elapsed < 2.5
        assert "upstream timed out (110: Connection timed out) while connecting to upstream" in (
            error_log(server)
        )
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# -- $upstream_* variables ---------------------------------------------------------------


def test_upstream_variables_show_every_peer_tried(portico, backends) -> None:
    a, b = backends("a", status=503), backends("b")
    dead = free_port()
    server = portico(
        """
        worker_processes 1;
        error_log {dir}/error.log info;
        events {{ }}
        http {{
            log_format up '$request_uri $status "$upstream_addr" "$upstream_status" '
                          '"$upstream_response_time"';
            access_log {dir}/access.log up;
            upstream refused {{ server 127.0.0.1:{dead}; server {b}; }}
            upstream busy {{ server {a}; server {b}; }}
            upstream one {{ server {b}; }}
            server {{
                listen 127.0.0.1:{port};
                proxy_next_upstream error timeout http_503;
                location /refused/ {{ proxy_pass http://refused; }}
                location /busy/ {{ proxy_pass http://busy; }}
                location /one/ {{ proxy_pass http://one; }}
            }}
        }}
        """,
        a=a.address,
        b=b.address,
        dead=dead,
    )
    for path in ("/refused/1", "/busy/1", "/one/1"):
        response = request(server.port, path)
        assert (response.status, response.header("X-Backend")) == (200, "b")
    lines = {line.split()[0]: line for line in access_log_lines(server)}
    times = r"\d+\.\d{3}"

    assert re.fullmatch(
        rf'/refused/1 200 "127.0.0.1:{dead}, {b.address}" "502, 200" "{times}, {times}"',
        lines["/refused/1"],
    ), lines["/refused/1"]
    assert re.fullmatch(
        rf'/busy/1 200 "{a.address}, {b.address}" "503, 200" "{times}, {times}"',
        lines["/busy/1"],
    ), lines["/busy/1"]
    assert re.fullmatch(rf'/one/1 200 "{b.address}" "200" "{times}"', lines["/one/1"])


def test_upstream_variables_keep_the_exchanges_before_an_error_page_redirect(
    portico,  # type: ignore[no-untyped-def]
    backends,  # type: ignore[no-untyped-def]
) -> None:
    """nginx separates the upstreams of each internal redirect with " : "."""
    failing, good = backends("a", status=502), backends("b")
    server = portico(
        """
        worker_processes 1;
        events {{ }}
        http {{
            log_format up '$upstream_addr|$upstream_status';
            access_log {dir}/access.log up;
            server {{
                listen 127.0.0.1:{port};
                location /s/ {{
                    proxy_pass http://{a}; proxy_intercept_errors on; error_page 502 = /p/ok;
                }}
                location /p/ {{ proxy_pass http://{b}; }}
            }}
        }}
        """,
        a=failing.address,
        b=good.address,
    )
    response = request(server.port, "/s/bad")
    assert (response.status, response.header("X-Backend")) == (200, "b")
    assert access_log_lines(server) == [f"{failing.address} : {good.address}|502 : 200"]


def test_every_attempt_has_a_time_even_when_the_answer_is_cut_or_abandoned(
    portico,  # type: ignore[no-untyped-def]
    backends,  # type: ignore[no-untyped-def]
) -> None:
    backend = backends("a")
    server = portico(
        """
        worker_processes 1;
        events {{ }}
        http {{
            log_format up '$request_uri "$upstream_addr" "$upstream_response_time"';
            access_log {dir}/access.log up;
            server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{a}; }} }}
        }}
        """,
        a=backend.address,
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until_close(sock).startswith(b"HTTP/1.1 200 ")  # then cut mid-body
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /slow?ms=500 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)  # the exchange is under way; the client goes away (a reset)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.2)  # portico sees the reset and logs the request (499)
    lines = {line.split()[0]: line for line in access_log_lines(server)}
    for uri in ("/cut", "/slow?ms=500"):
        assert re.fullmatch(rf'{re.escape(uri)} "{backend.address}" "\d+\.\d{{3}}"', lines[uri]), (
            lines[uri]
        )


ABORT_CONFIG = """
worker_processes 1;
events {{ }}
http {{
    log_format brief '$request_uri $status';
    access_log {dir}/access.log brief;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://{a}; {ignore} }}
    }}
}}
"""


@contextlib.contextmanager
def pending_request(server: Portico, backend: Backend, target: str) -> Iterator[socket.socket]:
    """A client socket whose GET the backend is working on (and has not answered)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % target.encode())
        assert backend.wait_for(lambda stats: stats.active == 1)
        yield sock


def test_a_client_that_closes_its_sending_side_gives_up_on_a_proxied_answer(
    portico,  # type: ignore[no-untyped-def]
    backends,  # type: ignore[no-untyped-def]
) -> None:
    """nginx's proxy_ignore_client_abort off: a FIN from the client while the upstream
    has not answered closes the upstream connection, and the request is logged 499."""
    backend = backends("a")
    server = portico(ABORT_CONFIG, a=backend.address, ignore="")
    with pending_request(server, backend, "/hang") as sock:
        sock.shutdown(socket.SHUT_WR)
        assert read_until_close(sock) == b""  # closed, nothing answered
    # the backend's /hang answers nothing until its peer closes: it has
    assert backend.wait_for(lambda stats: stats.active == 0, timeout=2.0)
    assert access_log_lines(server) == ["/hang 499"]


def test_with_ignore_client_abort_a_half_closed_client_still_gets_its_answer(
    portico,  # type: ignore[no-untyped-def]
    backends,  # type: ignore[no-untyped-def]
) -> None:
    backend = backends("a")
    server = portico(ABORT_CONFIG, a=backend.address, ignore="proxy_ignore_client_abort on;")
    with pending_request(server, backend, "/slow?ms=300") as sock:
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_close(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in answer
    # a client that goes away for good (a reset): the upstream's answer is still read to
    # its end, and its connection goes back to the pool (the backend sees no close)
    with pending_request(server, backend, "/slow?ms=300") as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert backend.wait_for(lambda stats: stats.active == 0 and stats.requests == 2)
    assert request(server.port, "/after").status == 200
    assert backend.stats.aborted == 0 and backend.stats.closed_by_peer == 0
    assert access_log_lines(server) == ["/slow?ms=300 200", "/slow?ms=300 499", "/after 200"]


def test_a_body_cut_short_or_too_long_ends_the_request_as_nginx_does(
    portico,  # type: ignore[no-untyped-def]
    backends,  # type: ignore[no-untyped-def]
) -> None:
    backend = backends("a")
    server = portico(
        """
        worker_processes 1;
        error_log {dir}/error.log info;
        events {{ }}
        http {{
            log_format brief '$request_uri $status';
            access_log {dir}/access.log brief;
            client_max_body_size 1k;
            client_body_timeout 30s;
            server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{a}; }} }}
        }}
        """,
        a=backend.address,
    )
    # the client stops sending halfway and closes its sending side: nothing more can
    # come, so no waiting for the body timeout; nothing answered, 400 logged
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /cut HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        time.sleep(0.1)
        started = time.monotonic()
        sock.shutdown(socket.SHUT_WR)
        assert read_until_close(sock) == b""
        assert time.monotonic() - started < 2.0
    # a chunked body over client_max_body_size: 413, and nginx's error line
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        sock.sendall(
            b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2
        )
        assert read_until_close(sock).startswith(b"HTTP/1.1 413 ")
    assert access_log_lines(server) == ["/cut 400", "/big 413"]
    log = error_log(server)
    assert "[info]" in log and "client prematurely closed connection" in log
    assert "client intended to send too large chunked body: 1024+1024 bytes" in log


# -- Upgrade tunnels ---------------------------------------------------------------------


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_exactly(sock: socket.socket, n: int, already: bytes = b"") -> bytes:
    data = already
    while len(data) < n:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgrade_opens_a_tunnel_both_ways(front: Front) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(UPGRADE)
        head, rest = read_head(sock)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101 ")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        assert headers["upgrade"] == "websocket"
        assert headers["connection"].lower() == "upgrade"
        assert headers["x-backend"] == "a"
        assert rest == b""
        for message in (b"hello", b"\x00\xff" * 3, bytes(range(256)) * 400):
            sock.sendall(message)
            assert read_exactly(sock, len(message)) == message
        seen = front.backend.stats.requests_seen[-1]
        names = {name.lower(): value for name, value in seen["headers"]}  # type: ignore[union-attr]
        assert names["upgrade"] == "websocket"
        assert "upgrade" in names["connection"].lower()
        assert names["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ=="


@contextlib.contextmanager
def tunnel(port: int) -> Iterator[socket.socket]:
    """A connection upgraded through portico (the backend echoes every byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(UPGRADE)
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ") and rest == b""
        yield sock


def test_a_tunnel_closes_both_ways(front: Front) -> None:
    backend = front.backend
    closed = backend.stats.closed_by_peer
    with tunnel(front.port) as sock:
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
    # the client went away: the backend's side of the tunnel is closed too
    assert backend.wait_for(lambda s: s.closed_by_peer > closed, timeout=5)


def test_a_tunnel_delivers_the_last_bytes_before_the_client_closes(front: Front) -> None:
    """The client's last message and its close arrive together: the message still
    reaches the backend before the backend's side is closed."""
    backend = front.backend
    closed = backend.stats.closed_by_peer
    with tunnel(front.port) as sock:
        before = backend.stats.tunnel_bytes
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
    # (other tests' connections may close meanwhile: wait for both facts)
    assert backend.wait_for(
        lambda s: s.tunnel_bytes - before >= len(b"last words") and s.closed_by_peer > closed,
        timeout=5,
    ), backend.stats
    assert backend.stats.tunnel_bytes - before == len(b"last words")


def test_upgrade_carries_bytes_sent_right_behind_the_request(front: Front) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(UPGRADE + b"early bytes")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert read_exactly(sock, len(b"early bytes"), rest) == b"early bytes"
        sock.sendall(b"later")
        assert read_exactly(sock, 5) == b"later"


def test_upgrade_request_tells_the_backend_only_to_upgrade(front: Front) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(UPGRADE)
        head, _ = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
    seen = front.backend.stats.requests_seen[-1]
    connection = [v for n, v in seen["headers"] if n.lower() == "connection"]  # type: ignore[union-attr]
    assert [v.lower() for v in connection] == ["upgrade"]


def test_proxy_http_version_1_0(portico, backends) -> None:  # type: ignore[no-untyped-def]
    backend = backends("a")
    server = portico(
        "events {{}} http {{ upstream up {{ server {a}; keepalive 4; }}\n"
        "server {{ listen 127.0.0.1:{port};\n"
        "  location / {{ proxy_http_version 1.0; proxy_pass http://up; }} }} }}",
        a=backend.address,
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/echo")
        response = conn.getresponse()
        seen = json.loads(response.read())
        assert response.status == 200
        assert seen["version"] == "HTTP/1.0"
        assert ["Connection", "close"] in seen["headers"]
    finally:
        conn.close()


def test_a_refused_upload_does_not_take_peers_out(portico, backends) -> None:  # type: ignore[no-untyped-def]
    # a chunked body over client_max_body_size gets 413 from portico itself: the
    # exchange already under way upstream is dropped, and no peer is blamed
    a, b = backends("a"), backends("b")
    server = portico(
        "events {{}} http {{ client_max_body_size 1k; proxy_read_timeout 1s;\n"
        "upstream up {{ server {a}; server {b}; }}\n"
        "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; }} }} }}",
        a=a.address,
        b=b.address,
    )
    chunk = b"800\r\n" + b"x" * 0x800 + b"\r\n"
    for _ in range(2):
        response = upload(server.port, "/echo", b"Transfer-Encoding: chunked\r\n", [chunk])
        assert response.status == 413
    time.sleep(1.5)  # past proxy_read_timeout: a forgotten exchange would fail by now
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        conn.request("GET", "/echo")
        assert conn.getresponse().status == 200
        conn.close()
    assert "no live upstreams" not in error_log(server)


def proxy_to(portico, backend, http_settings: str):  # type: ignore[no-untyped-def]
    """A portico proxying everything to ``backend``, with ``http_settings``."""
    return portico(
        "events {{}} http {{ " + http_settings + "\n"
        "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{a}; }} }} }}",
        a=backend.address,
    )


def test_a_slow_upload_is_not_cut_by_the_read_timeout(portico, backends) -> None:  # type: ignore[no-untyped-def]
    # proxy_read_timeout counts once the whole request is out, as nginx
    server = proxy_to(portico, backends("a"), "client_body_timeout 3s; proxy_read_timeout 1s;")

    def slowly() -> Iterable[bytes]:
        for _ in range(4):
            time.sleep(0.5)
            yield b"abcd"

    response = upload(server.port, "/upload", b"Content-Length: 16\r\n", slowly())
    assert response.status == 200
    assert response.json()["body_size"] == 16


def test_a_slow_download_is_not_cut_by_the_read_timeout(portico, backends) -> None:  # type: ignore[no-untyped-def]
    # while our client does not read, the upstream is not read either: the wait is the
    # client's (send_timeout), not the upstream's, whatever proxy_read_timeout says
    server = proxy_to(portico, backends("a"), "proxy_read_timeout 1s; send_timeout 10s;")
    size = 32 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % size)
        head, body = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        time.sleep(2.5)  # every buffer on the way fills, and stays full past the timeout
        received = len(body)
        while True:
            chunk = sock.recv(1024 * 1024)
            if not chunk:
                break
            received += len(chunk)
    assert received == size
    assert "timed out" not in error_log(server)


def test_an_absolute_form_target_goes_upstream_in_origin_form(portico, backends) -> None:  # type: ignore[no-untyped-def]
    backend = backends("a")
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port};\n"
        "  location / {{ proxy_pass http://{a}; }} }} }}",
        a=backend.address,
    )
    response = raw_exchange(
        server.port,
        b"GET http://evil.example/echo?q=1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    assert response.status == 200
    assert response.json()["target"] == "/echo?q=1"


def test_header_names_with_underscores_reach_the_backend_only_if_allowed(portico, backends) -> None:  # type: ignore[no-untyped-def]
    backend = backends("a")
    server = portico(
        "events {{}} http {{\n"
        "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{a}; }} }}\n"
        "server {{ listen 127.0.0.1:{port2}; underscores_in_headers on;\n"
        "          location / {{ proxy_pass http://{a}; }} }} }}",
        ports=2,
        a=backend.address,
    )
    seen = []
    for port in (server.port, server.ports["port2"]):
        assert request(port, "/", headers={"X_User": "admin", "X-User": "real"}).status == 200
        names = [name for name, _ in backend.stats.requests_seen[-1]["headers"]]
        seen.append([name for name in names if name.lower().startswith("x")])
    assert seen == [["X-User"], ["X_User", "X-User"]]


def test_redirects_to_the_upstream_are_rewritten_as_nginx_does(portico, backends) -> None:  # type: ignore[no-untyped-def]
    backend = backends("a")
    up = f"http://{backend.address}"
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port};\n"
        "location /api/ {{ proxy_pass http://{a}/v2/; }}\n"
        "location /raw/ {{ proxy_pass http://{a}/v2/; proxy_redirect off; }}\n"
        "location /own/ {{ proxy_pass http://{a}; proxy_redirect {up}/ /mine/; }}\n"
        "location / {{ proxy_pass http://{a}; }} }} }}",
        a=backend.address,
        up=up,
    )

    def moved(path: str, to: str) -> tuple[str | None, str | None]:
        response = request(server.port, f"{path}?to={to}")
        assert response.status == 302
        return response.header("Location"), response.header("Refresh")

    # proxy_redirect default: the proxy_pass URL becomes the location
    assert moved("/api/redirect", f"{up}/v2/login") == ("/api/login", "0; url=/api/login")
    assert moved("/redirect", f"{up}/x") == ("/x", "0; url=/x")
    assert moved("/api/redirect", "http://elsewhere/v2/") == (
        "http://elsewhere/v2/",
        "0; url=http://elsewhere/v2/",
    )
    assert moved("/raw/redirect", f"{up}/v2/login")[0] == f"{up}/v2/login"
    assert moved("/own/redirect", f"{up}/y")[0] == "/mine/y"
