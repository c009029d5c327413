"""The WSGI layer end to end: real Flask apps and plain PEP 3333 callables (tests/apps/)
run by a real portico, spoken to by real clients.

One portico serves every case, on four ports: the apps threaded (``wsgi_threads``, the
default) as they are and wrapped in ``wsgiref.validate.validator``, then the same
inline (``wsgi_threads 0``). The validator turns any breach of PEP 3333 by the server
into an AssertionError in the worker, so every test also checks that the log it caused
has none. Tests that need a process of their own (memory, timing) start one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Portico, free_port

REPO = Path(__file__).resolve().parents[2]

# {app}: the app's variant (app or validated), {plain}: the plain callable's,
# {flask}: for modules whose Flask app is not their ``app``
LOCATIONS = """
        root {root}/www;
        location /static/ {{ }}
        location / {{ wsgi tests.apps.echo:{app}; }}
        location /echo/ {{ wsgi_script_name /echo; wsgi tests.apps.echo:{app}; }}
        location /plain-echo/ {{ wsgi_script_name /plain-echo; wsgi tests.apps.echo:{plain}; }}
        location /hello/ {{ wsgi_script_name /hello; wsgi tests.apps.hello:{app}; }}
        location /plain-hello/ {{
            wsgi_script_name /plain-hello; wsgi tests.apps.hello:{plain};
        }}
        location /stream/ {{ wsgi_script_name /stream; wsgi tests.apps.stream:{app}; }}
        location /closing/ {{ wsgi_script_name /closing; wsgi tests.apps.closing:{app}; }}
        location /closing-flask/ {{
            wsgi_script_name /closing-flask; wsgi tests.apps.closing:{flask};
        }}
        location /lazy/ {{ wsgi_script_name /lazy; wsgi tests.apps.hello:{lazy}; }}
        location /lengths/ {{ wsgi_script_name /lengths; wsgi tests.apps.lengths:{app}; }}
        location /error/ {{ wsgi_script_name /error; wsgi tests.apps.error:{app}; }}
        location /plain-error/ {{
            wsgi_script_name /plain-error; wsgi tests.apps.error:{plain};
        }}
        location /write/ {{ wsgi_script_name /write; wsgi tests.apps.write:{app}; }}
        location /exc-info/ {{ wsgi_script_name /exc-info; wsgi tests.apps.exc_info:{app}; }}
        location /hop/ {{ wsgi_script_name /hop; wsgi tests.apps.hop:{app}; }}
        location /hop-flask/ {{ wsgi_script_name /hop-flask; wsgi tests.apps.hop:{flask}; }}
        location /files/ {{ wsgi_script_name /files; wsgi tests.apps.files:{app}; }}
        location /plain-files/ {{
            wsgi_script_name /plain-files; wsgi tests.apps.files:{plain};
        }}
"""
THREADED_ONLY = """
        server_name wsgi.test;
        location /streaming-echo/ {{
            wsgi_script_name /streaming-echo;
            wsgi_request_buffering off;
            wsgi tests.apps.echo:{app};
        }}
        location /upload/ {{ wsgi_script_name /upload; wsgi tests.apps.upload:{app}; }}
        location /streaming-upload/ {{
            wsgi_script_name /streaming-upload;
            wsgi_request_buffering off;
            wsgi tests.apps.upload:{app};
        }}
        location /slow/ {{ wsgi_script_name /slow; wsgi tests.apps.slow:{app}; }}
"""
INLINE = """
        wsgi_threads 0;
"""
VARIANTS = {
    "app": {"app": "app", "plain": "plain", "flask": "flask_app", "lazy": "lazy"},
    "validated": {
        "app": "validated",
        "plain": "plain_validated",
        "flask": "flask_validated",
        "lazy": "lazy_validated",
    },
}
HEAD = """
worker_processes 1;
error_log stderr info;
events {{ }}
http {{
    access_log off;
    client_max_body_size 100m;
    wsgi_path {repo};
    wsgi_env DATA_FILE {root}/data.bin;
    wsgi_env CLOSE_LOG {root}/close.log;
    wsgi_env PORTICO_TEST "set by wsgi_env";
"""


def config_text(root: Path, ports: dict[str, int]) -> str:
    """One server per (mode, variant): threaded on port and port2, inline on port3 and
    port4; the app as it is on the first of each pair, validated on the second."""
    servers = []
    for port, mode, variant in (
        ("port", "threaded", "app"),
        ("port2", "threaded", "validated"),
        ("port3", "inline", "app"),
        ("port4", "inline", "validated"),
    ):
        body = LOCATIONS + (THREADED_ONLY if mode == "threaded" else INLINE)
        servers.append(
            "    server {\n"
            f"        listen 127.0.0.1:{ports[port]};\n"
            + body.format(root=root, **VARIANTS[variant])
            + "    }\n"
        )
    return HEAD.format(repo=REPO, root=root) + "".join(servers) + "}\n"


DATA = os.urandom(3 * 1024 * 1024 + 12345)  # above the app side's 1 MiB hand-over limit
STYLE = b"body { color: #333; }\n"
# what a log must never show after a good request: a validator's complaint, an
# exception of the app's, or one that escaped into the event loop
BAD_LOG = (
    "AssertionError",
    "WSGIWarning",
    "Exception ignored",
    "the app raised",
    "Fatal error",
    "Exception in callback",
)


class Server:
    """The shared portico, with the log of one test at a time."""

    def __init__(self, process: Portico, root: Path) -> None:
        self.process = process
        self.root = root
        self.ports = {
            ("threaded", "app"): process.ports["port"],
            ("threaded", "validated"): process.ports["port2"],
            ("inline", "app"): process.ports["port3"],
            ("inline", "validated"): process.ports["port4"],
        }
        self.mark = 0

    def log_since_mark(self) -> str:
        return self.process.log()[self.mark :]

    def set_mark(self) -> None:
        self.mark = len(self.process.log())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("wsgi")
    (root / "www" / "static").mkdir(parents=True)
    (root / "www" / "static" / "style.css").write_bytes(STYLE)
    (root / "data.bin").write_bytes(DATA)
    (root / "close.log").write_text("")
    directory = root / "portico"
    directory.mkdir()
    ports = {name: free_port() for name in ("port", "port2", "port3", "port4")}
    process = Portico(directory, config_text(root, ports), ports)
    try:
        yield Server(process, root)
    finally:
        process.stop()
        log = process.log()
    # what the garbage collector, a validator or the event loop said, all along (an
    # answer never closed: "Exception ignored in: <...IteratorWrapper...>")
    for bad in ("Exception ignored", "WSGIWarning", "Fatal error", "Exception in callback"):
        assert bad not in log, log


@pytest.fixture
def server(shared: Server, request: pytest.FixtureRequest) -> Iterator[Server]:
    shared.set_mark()
    yield shared
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f"--- portico log of this test ---\n{shared.log_since_mark()}")


def assert_clean_log(server: Server) -> None:
    log = server.log_since_mark()
    for bad in BAD_LOG:
        assert bad not in log, log


def wait_for_log(server: Server, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = server.log_since_mark()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.02)


# -- clients ---------------------------------------------------------------------------


def fetch(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def echo(port: int, path: str, **kwargs: Any) -> dict[str, Any]:
    status, headers, body = fetch(port, kwargs.pop("method", "GET"), path, **kwargs)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)  # type: ignore[no-any-return]


_WIRES: list[Wire] = []


@pytest.fixture(autouse=True)
def _close_wires() -> Iterator[None]:
    yield
    while _WIRES:
        _WIRES.pop().close()


class Wire:
    """A raw HTTP/1.x client on one connection: what exactly came back, byte for byte."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        _WIRES.append(self)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(262144)
        self.buffer += data
        return bool(data)

    def head(self) -> tuple[str, int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a whole head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], int(lines[0].split()[1]), headers

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise ConnectionError(f"closed after {len(self.buffer)} of {count} bytes")
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("closed in the middle of a line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def chunked(self) -> tuple[bytes, bool]:
        """A chunked body, and whether it ended properly (last chunk) or was cut."""
        body = []
        try:
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    assert self.line() == b""  # no trailers
                    return b"".join(body), True
                body.append(self.exactly(size))
                assert self.exactly(2) == b"\r\n"
        except (ConnectionError, ValueError):
            return b"".join(body), False

    def until_close(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def closed(self, timeout: float = 5.0) -> bool:
        """The server closed the connection (and sent nothing more)."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill() and self.buffer == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding") == "chunked":
            body, ended = self.chunked()
            assert ended
            return body
        return self.exactly(int(headers.get("content-length", "0")))


def request_bytes(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: wsgi.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


VARIANT = pytest.mark.parametrize("variant", ["app", "validated"])
MODES = pytest.mark.parametrize("mode", ["threaded", "inline"])


# -- environ ---------------------------------------------------------------------------


@VARIANT
@MODES
def test_environ_of_a_plain_get(server: Server, variant: str, mode: str) -> None:
    port = server.ports[mode, variant]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/echo/some/path?x=1&y=two", headers={"X-Test": "yes"})
    response = conn.getresponse()
    data = json.loads(response.read())
    local_port = conn.sock.getsockname()[1]
    conn.close()
    assert response.status == 200
    env = data["environ"]
    assert env == {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "/echo",
        "PATH_INFO": "/some/path",
        "QUERY_STRING": "x=1&y=two",
        "SERVER_NAME": "wsgi.test" if mode == "threaded" else "127.0.0.1",
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(local_port),
        "PORTICO_TEST": "set by wsgi_env",
    }
    assert data["headers"]["HTTP_X_TEST"] == "yes"
    assert data["headers"]["HTTP_HOST"] == f"127.0.0.1:{port}"
    assert data["wsgi"] == {
        "wsgi.version": [1, 0],
        "wsgi.url_scheme": "http",
        "wsgi.multithread": mode == "threaded",
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    assert data["flask"] == {
        "path": "/some/path",
        "script_root": "/echo",
        "args": {"x": "1", "y": "two"},
    }
    assert data["body_length"] == 0
    assert_clean_log(server)


@VARIANT
def test_environ_of_a_http10_request(server: Server, variant: str) -> None:
    wire = Wire(server.ports["threaded", variant])
    wire.send(b"GET /echo/x HTTP/1.0\r\n\r\n")
    _, status, _ = wire.head()
    data = json.loads(wire.until_close())
    wire.close()
    assert status == 200
    assert data["environ"]["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_HOST" not in data["headers"]
    assert_clean_log(server)


@VARIANT
def test_path_is_decoded_latin1_and_query_is_raw(server: Server, variant: str) -> None:
    port = server.ports["threaded", variant]
    data = echo(port, "/echo/caf%C3%A9/a%2Fb/100%25?q=caf%C3%A9&s=a%2Fb&t=%25")
    env = data["environ"]
    # PEP 3333: the decoded path's bytes, each as one latin-1 character
    assert env["PATH_INFO"] == "/café/a/b/100%".encode().decode("latin-1")
    assert env["QUERY_STRING"] == "q=caf%C3%A9&s=a%2Fb&t=%25"
    # and Flask, which follows the PEP, gets the real text back
    assert data["flask"]["path"] == "/café/a/b/100%"
    assert data["flask"]["args"] == {"q": "café", "s": "a/b", "t": "%"}
    assert_clean_log(server)


@VARIANT
def test_script_name(server: Server, variant: str) -> None:
    port = server.ports["threaded", variant]
    env = echo(port, "/echo/")["environ"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/echo", "/")
    # a location without wsgi_script_name: the whole path is PATH_INFO
    env = echo(port, "/elsewhere/x")["environ"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/elsewhere/x")
    # the plain callable sees the same
    env = echo(port, "/plain-echo/a/b?c")["environ"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == (
        "/plain-echo",
        "/a/b",
        "c",
    )
    assert_clean_log(server)


@VARIANT
def test_repeated_headers_are_joined(server: Server, variant: str) -> None:
    wire = Wire(server.ports["threaded", variant])
    wire.send(
        request_bytes(
            "GET",
            "/echo/",
            "X-Multi: a",
            "Accept: text/html",
            "X-Multi: b, c",
            "Cookie: one=1",
            "Cookie: two=2",
            "Accept: application/json",
            "Connection: close",
        )
    )
    _, status, headers = wire.head()
    data = json.loads(wire.body(headers))
    wire.close()
    assert status == 200
    assert data["headers"]["HTTP_X_MULTI"] == "a, b, c"
    assert data["headers"]["HTTP_ACCEPT"] == "text/html, application/json"
    assert data["headers"]["HTTP_COOKIE"] == "one=1; two=2"
    assert_clean_log(server)


@VARIANT
@pytest.mark.parametrize("underscore_first", [True, False])
def test_header_with_underscores_cannot_impersonate(
    server: Server, variant: str, underscore_first: bool
) -> None:
    lines = ["X_Forwarded_For: 6.6.6.6", "X-Forwarded-For: 10.0.0.1"]
    if not underscore_first:
        lines.reverse()
    data = echo(
        server.ports["threaded", variant], "/echo/", headers=dict(x.split(": ") for x in lines)
    )
    assert data["headers"]["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    # alone, it does not arrive at all
    data = echo(server.ports["threaded", variant], "/echo/", headers={"X_Real_IP": "6.6.6.6"})
    assert "HTTP_X_REAL_IP" not in data["headers"]
    assert not any("6.6.6.6" in value for value in data["headers"].values())
    assert_clean_log(server)


@VARIANT
@MODES
def test_content_type_and_length(server: Server, variant: str, mode: str) -> None:
    body = b"a=1&b=2"
    data = echo(
        server.ports[mode, variant],
        "/echo/form",
        method="POST",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    env = data["environ"]
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in data["headers"]
    assert "HTTP_CONTENT_LENGTH" not in data["headers"]
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert_clean_log(server)


@VARIANT
@MODES
def test_chunked_body_has_no_content_length(server: Server, variant: str, mode: str) -> None:
    body = os.urandom(100_000)
    wire = Wire(server.ports[mode, variant])
    wire.send(
        request_bytes("POST", "/echo/up", "Transfer-Encoding: chunked", "Content-Type: x/y")
        + chunked(body[:1000], body[1000:50_000], body[50_000:])
    )
    _, status, headers = wire.head()
    data = json.loads(wire.body(headers))
    wire.close()
    assert status == 200
    assert "CONTENT_LENGTH" not in data["environ"]
    assert data["environ"]["CONTENT_TYPE"] == "x/y"
    assert (data["body_length"], data["body_sha256"]) == (
        len(body),
        hashlib.sha256(body).hexdigest(),
    )
    assert_clean_log(server)


# -- request bodies --------------------------------------------------------------------


def multipart(fields: dict[str, str], name: str, content: bytes) -> tuple[bytes, str]:
    boundary = "----portico-test-boundary-7d1f"
    parts = []
    for key, value in fields.items():
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{key}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    parts.append(content)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


BIG_UPLOAD = os.urandom(1024 * 1024) * 50  # 50 MB


@VARIANT
@pytest.mark.parametrize("location", ["upload", "streaming-upload"])
def test_multipart_upload_of_50_mb(server: Server, variant: str, location: str) -> None:
    body, content_type = multipart({"title": "big one"}, "big.bin", BIG_UPLOAD)
    status, _, answer = fetch(
        server.ports["threaded", variant],
        "POST",
        f"/{location}/upload",
        body=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert status == 200, answer
    assert json.loads(answer) == {
        "name": "big.bin",
        "size": len(BIG_UPLOAD),
        "sha256": hashlib.sha256(BIG_UPLOAD).hexdigest(),
        "fields": {"title": "big one"},
    }
    assert_clean_log(server)


@VARIANT
def test_chunked_multipart_upload_to_flask(server: Server, variant: str) -> None:
    content = os.urandom(2 * 1024 * 1024 + 7)
    body, content_type = multipart({"title": "chunked"}, "c.bin", content)
    wire = Wire(server.ports["threaded", variant])
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    wire.send(
        request_bytes(
            "POST",
            "/upload/upload",
            "Transfer-Encoding: chunked",
            f"Content-Type: {content_type}",
            "Connection: close",
        )
        + chunked(*pieces)
    )
    _, status, headers = wire.head()
    answer = wire.body(headers)
    wire.close()
    assert status == 200, answer
    assert json.loads(answer)["sha256"] == hashlib.sha256(content).hexdigest()


def lines_body(size: int) -> bytes:
    """Lines of many lengths: empty ones, long ones (past readline(100)), and a last
    line without its newline."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += b"%d:" % i + b"y" * ((i * 37) % 300) + b"\n"
        if i % 11 == 0:
            out += b"\n"
        i += 1
    return bytes(out) + b"no newline at the end"


SMALL_LINES = lines_body(20_000)  # kept in memory
LARGE_LINES = lines_body(1_500_000)  # spooled to a temporary file, or streamed


@VARIANT
@pytest.mark.parametrize(
    ("read_with", "framing"),
    [
        (read_with, framing)
        for read_with in ("read", "length", "readline", "readline-n", "readlines", "iter")
        for framing in ("length", "chunked")
        if (read_with, framing) != ("length", "chunked")  # read(CONTENT_LENGTH) needs one
    ],
)
@pytest.mark.parametrize("location", ["echo", "streaming-echo"])
def test_wsgi_input_reads(
    server: Server, variant: str, read_with: str, location: str, framing: str
) -> None:
    """Buffered (in memory, or a temporary file past 1 MiB) and streamed bodies, read
    in each way wsgi.input allows (see tests/apps/echo.py)."""
    port = server.ports["threaded", variant]
    for body in (SMALL_LINES, LARGE_LINES):
        wire = Wire(port)
        path = f"/{location}/?mode={read_with}"
        if framing == "length":
            wire.send(request_bytes("POST", path, f"Content-Length: {len(body)}", body=body))
        else:
            pieces = [body[i : i + 10_007] for i in range(0, len(body), 10_007)]
            wire.send(request_bytes("POST", path, "Transfer-Encoding: chunked") + chunked(*pieces))
        _, status, headers = wire.head()
        data = json.loads(wire.body(headers))
        # past the end, reads return b"" at once: the connection is still usable
        wire.send(request_bytes("GET", "/hello/", "Connection: close"))
        _, second, headers = wire.head()
        assert (second, wire.body(headers)) == (200, b"hello world!")
        wire.close()
        assert status == 200
        assert (data["body_length"], data["body_sha256"]) == (
            len(body),
            hashlib.sha256(body).hexdigest(),
        )
        lines = body.splitlines(keepends=True)
        if read_with in ("readline", "readlines", "iter"):
            assert data["pieces"] == len(lines)
        if read_with == "readline-n":
            assert data["longest_piece"] == 100
            assert data["pieces"] == sum(max(1, -(-len(line) // 100)) for line in lines)
    assert_clean_log(server)


FIRST_ANSWER = b"a\r\ngot first\n\r\n"  # the app's answer to the first line, as a chunk


def _streamed_lines(port: int, location: str) -> tuple[bytes, bytes]:
    """Send one line of a chunked body, see what comes back before the rest is sent."""
    wire = Wire(port)
    wire.send(
        request_bytes("POST", f"/{location}/lines", "Transfer-Encoding: chunked")
        + b"6\r\nfirst\n\r\n"
    )
    wire.sock.settimeout(0.5)
    try:
        _, status, headers = wire.head()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        early = wire.exactly(len(FIRST_ANSWER))
    except TimeoutError:
        early = b""
    wire.sock.settimeout(10.0)
    wire.send(b"7\r\nsecond\n\r\n0\r\n\r\n")
    if not early:
        _, status, headers = wire.head()
    rest, ended = wire.chunked()
    wire.close()
    assert ended
    return early, rest


@VARIANT
def test_unbuffered_body_reaches_the_app_as_it_arrives(server: Server, variant: str) -> None:
    port = server.ports["threaded", variant]
    # wsgi_request_buffering off: the app answers the first line before the second is sent
    early, rest = _streamed_lines(port, "streaming-upload")
    assert early == FIRST_ANSWER
    assert rest == b"got second\n"
    # buffering on (the default): nothing comes back before the whole body is in
    early, rest = _streamed_lines(port, "upload")
    assert early == b""
    assert rest == b"got first\ngot second\n"
    assert_clean_log(server)


# -- streamed answers -------------------------------------------------------------------


LINES = b"".join(b"line %d\n" % i for i in range(5))


@VARIANT
@MODES
def test_generator_is_chunked_for_http11(server: Server, variant: str, mode: str) -> None:
    wire = Wire(server.ports[mode, variant])
    for _ in range(2):  # and the connection is kept for the next request
        wire.send(request_bytes("GET", "/stream/lines?n=5"))
        _, status, headers = wire.head()
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        assert headers.get("connection", "keep-alive").lower() == "keep-alive"
        assert wire.chunked() == (LINES, True)
    wire.close()
    assert_clean_log(server)


@VARIANT
@MODES
def test_generator_is_close_delimited_for_http10(server: Server, variant: str, mode: str) -> None:
    wire = Wire(server.ports[mode, variant])
    wire.send(b"GET /stream/lines?n=5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status_line, status, headers = wire.head()
    body = wire.until_close()
    wire.close()
    assert status == 200 and status_line.startswith("HTTP/1.")
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert headers["connection"].lower() == "close"
    assert body == LINES
    assert_clean_log(server)


@VARIANT
@MODES
def test_head_sends_no_body(server: Server, variant: str, mode: str) -> None:
    wire = Wire(server.ports[mode, variant])
    wire.send(request_bytes("HEAD", "/stream/lines?n=5"))
    _, status, headers = wire.head()
    assert status == 200
    wire.send(request_bytes("HEAD", "/hello/"))
    _, status, headers = wire.head()
    assert status == 200 and headers["content-length"] == "12"
    # nothing came after either head: the next answer starts right there
    wire.send(request_bytes("GET", "/hello/", "Connection: close"))
    status_line, status, headers = wire.head()
    assert status_line.startswith("HTTP/1.1 200")
    assert wire.body(headers) == b"hello world!"
    assert wire.closed()
    wire.close()
    assert_clean_log(server)


def _closes(server: Server, tag: str, timeout: float = 5.0) -> list[int]:
    """How many chunks had gone out when the answers tagged ``tag`` were closed."""
    deadline = time.monotonic() + timeout
    while True:
        text = (server.root / "close.log").read_text()
        found = [int(m) for m in re.findall(rf"^{tag} closed after (\d+)$", text, re.M)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


@VARIANT
@MODES
@pytest.mark.parametrize("location", ["closing", "closing-flask"])
def test_close_is_called_when_the_answer_is_complete(
    server: Server, variant: str, mode: str, location: str
) -> None:
    tag = f"done-{variant}-{mode}-{location}"
    status, _, body = fetch(server.ports[mode, variant], "GET", f"/{location}/?tag={tag}&chunks=4")
    assert status == 200 and body == b"c" * 65536 * 4
    assert _closes(server, tag) == [4]
    assert_clean_log(server)


@VARIANT
@MODES
@pytest.mark.parametrize("location", ["closing", "closing-flask"])
@pytest.mark.parametrize("read", [0, 300_000])
def test_close_is_called_when_the_client_goes_away(
    server: Server, variant: str, mode: str, location: str, read: int
) -> None:
    tag = f"gone-{variant}-{mode}-{location}-{read}"
    total = 4096  # 256 MiB: far more than socket buffers hold
    wire = Wire(server.ports[mode, variant])
    wire.send(request_bytes("GET", f"/{location}/?tag={tag}&chunks={total}"))
    _, status, _ = wire.head()
    assert status == 200
    wire.exactly(read)
    # a reset, not a polite close: the server learns at once
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wire.close()
    closes = _closes(server, tag)
    assert len(closes) == 1, closes
    if mode == "threaded":  # and the app stopped early (inline: see the next test)
        assert closes[0] < total
    assert "AssertionError" not in server.log_since_mark()


def test_inline_answer_stops_when_the_client_goes_away(portico: Any) -> None:
    server = portico(
        "worker_processes 1;\nerror_log stderr info;\nevents {{ }}\nhttp {{ access_log off;\n"
        "server {{ listen 127.0.0.1:{port}; wsgi_path {repo}; wsgi_threads 0;\n"
        "wsgi_env CLOSE_LOG {dir}/close.log;\n"
        "location / {{ wsgi tests.apps.closing:app; }} }} }}\n",
        repo=REPO,
    )
    close_log = server.directory / "close.log"
    close_log.write_text("")
    total = 20_000  # 1.3 GB: a lot more than socket buffers hold
    stopped = []
    for attempt in range(5):  # the race is lost nearly always, so a few tries are plenty
        wire = Wire(server.port)
        wire.send(request_bytes("GET", f"/?tag=t{attempt}&chunks={total}"))
        assert wire.head()[1] == 200
        # gone while the answer is being written (the bug is in that window)
        wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wire.close()
        # the worker answers someone else at once
        elapsed, status, body = _timed(server.port, "/?tag=probe&chunks=1")
        assert (status, body) == (200, b"c" * 65536)
        deadline = time.monotonic() + 5
        while f"t{attempt} closed" not in close_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        found = re.findall(rf"^t{attempt} closed after (\d+)$", close_log.read_text(), re.M)
        stopped.append((int(found[0]) if found else None, round(elapsed, 2)))
    assert all(sent is not None and sent < total for sent, _ in stopped), stopped


MB = 1024 * 1024
BIG_STREAM_MB = 1024


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("location", ["stream/big?mb=%d", "plain-stream/?%d"])
def test_a_1gb_generator_streams_in_bounded_memory(portico: Any, location: str) -> None:
    """The worker's memory (VmRSS, read while the client drains as fast as it can) stays
    flat while 1 GiB goes out: the app is paused, not buffered, when the client lags."""
    server = portico(
        "worker_processes 1;\nerror_log stderr info;\nevents {{ }}\nhttp {{ access_log off;\n"
        "server {{ listen 127.0.0.1:{port}; wsgi_path {repo};\n"
        "location /stream/ {{ wsgi_script_name /stream; wsgi tests.apps.stream:app; }}\n"
        "location /plain-stream/ {{ wsgi_script_name /plain-stream; "
        "wsgi tests.apps.stream:plain; }} }} }}\n",
        repo=REPO,
    )
    (worker,) = server.worker_pids()
    fetch(server.port, "GET", "/stream/big?mb=2")  # the app is imported, the pool running
    wire = Wire(server.port, timeout=20)
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
    wire.send(request_bytes("GET", "/" + location % BIG_STREAM_MB, "Connection: close"))
    _, status, headers = wire.head()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    base = peak = _rss(worker)
    received = len(wire.buffer)
    wire.buffer = b""
    buffer = bytearray(4 * MB)
    view = memoryview(buffer)
    started = time.monotonic()
    reads = 0
    while True:
        count = wire.sock.recv_into(view)
        if not count:
            break
        received += count
        reads += 1
        if reads % 64 == 0:
            peak = max(peak, _rss(worker))
    elapsed = time.monotonic() - started
    wire.close()
    framing = BIG_STREAM_MB * (len(b"100000\r\n\r\n")) + len(b"0\r\n\r\n")
    assert received == BIG_STREAM_MB * MB + framing
    assert peak - base < 30 * MB, f"RSS grew by {(peak - base) // MB} MB"
    assert elapsed < 20


# -- files -------------------------------------------------------------------------------


@VARIANT
@MODES
def test_send_file_whole_ranges_and_conditions(server: Server, variant: str, mode: str) -> None:
    port = server.ports[mode, variant]
    status, headers, body = fetch(port, "GET", "/files/send")
    assert status == 200 and body == DATA
    assert headers["Content-Length"] == str(len(DATA))
    assert headers["Accept-Ranges"] == "bytes"
    etag, modified = headers["ETag"], headers["Last-Modified"]
    status, headers, body = fetch(port, "GET", "/files/send", headers={"Range": "bytes=100-199"})
    assert (status, body) == (206, DATA[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    assert headers["Content-Length"] == "100"
    status, _, body = fetch(port, "GET", "/files/send", headers={"Range": "bytes=-500"})
    assert (status, body) == (206, DATA[-500:])
    start = len(DATA) - 70_000
    status, _, body = fetch(port, "GET", "/files/send", headers={"Range": f"bytes={start}-"})
    assert (status, body) == (206, DATA[start:])
    status, headers, _ = fetch(
        port, "GET", "/files/send", headers={"Range": f"bytes={len(DATA) + 10}-"}
    )
    assert status == 416
    status, _, body = fetch(port, "GET", "/files/send", headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    status, _, body = fetch(port, "GET", "/files/send", headers={"If-Modified-Since": modified})
    assert (status, body) == (304, b"")
    status, headers, body = fetch(port, "HEAD", "/files/send")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(DATA))
    assert_clean_log(server)


@VARIANT
@pytest.mark.parametrize(
    ("path", "start", "end"),
    [
        ("/plain-files/real", 0, None),
        ("/plain-files/real?skip=1000", 1000, None),  # from where the file stands
        ("/plain-files/real?length=5000", 0, 5000),  # no more than declared
        ("/plain-files/real?skip=10&length=20", 10, 30),
        ("/plain-files/bytesio", 0, None),
    ],
)
@MODES
def test_file_wrapper(
    server: Server,
    variant: str,
    mode: str,
    path: str,
    start: int,
    end: int | None,
    request: pytest.FixtureRequest,
) -> None:
    expected = DATA[start:end]
    wire = Wire(server.ports[mode, variant])
    for _ in range(2):  # twice on one connection: the answer ends exactly
        wire.send(request_bytes("GET", path))
        _, status, headers = wire.head()
        assert status == 200
        assert headers.get("content-length") in (None, str(len(expected)))
        assert wire.body(headers) == expected
    wire.send(request_bytes("HEAD", path))
    _, status, headers = wire.head()
    assert status == 200
    wire.send(request_bytes("GET", "/hello/", "Connection: close"))
    assert wire.head()[1] == 200
    assert wire.until_close() == b"hello world!"
    assert_clean_log(server)


@VARIANT
@MODES
@pytest.mark.parametrize(
    ("pieces", "declared", "too_much"),
    [
        ("30", 30, False),
        ("10,10,10", 30, False),
        ("30,0", 30, False),
        ("20,20", 30, True),  # the declared length reached within the pieces
        ("10,10,10,10", 30, True),  # one piece after the declared length
        ("40,10", 30, True),  # the first piece already past it
        ("40", 30, True),  # in one piece
    ],
)
def test_app_sends_more_than_its_content_length(
    server: Server,
    variant: str,
    mode: str,
    pieces: str,
    declared: int,
    too_much: bool,
) -> None:
    port = server.ports[mode, variant]
    wire = Wire(port)
    wire.send(request_bytes("GET", f"/lengths/?declared={declared}&pieces={pieces}"))
    _, status, headers = wire.head()
    assert status == 200
    assert headers["content-length"] == str(declared)
    assert wire.exactly(declared) == (b"0123456789" * 3)[:declared]
    # what follows is the next answer (or, after an app that sent too much, possibly the
    # end of the connection): never stray bytes
    wire.send(request_bytes("GET", "/hello/", "Connection: close"))
    rest = wire.until_close()
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") or (too_much and rest == b""), rest[:60]
    assert_clean_log(server)


def test_inline_post_keeps_the_connection(server: Server) -> None:
    """Inline, the answer is complete before the connection's own processing of the
    request returns: the connection must survive that (it once did not)."""
    wire = Wire(server.ports["inline", "app"])
    for i in range(3):
        body = b"x=%d" % i
        wire.send(request_bytes("POST", "/echo/", f"Content-Length: {len(body)}", body=body))
        _, status, headers = wire.head()
        assert status == 200
        assert json.loads(wire.body(headers))["body_sha256"] == hashlib.sha256(body).hexdigest()
    wire.close()
    assert "Fatal error" not in server.log_since_mark()


@VARIANT
def test_app_sends_less_than_its_content_length(server: Server, variant: str) -> None:
    wire = Wire(server.ports["threaded", variant])
    wire.send(request_bytes("GET", "/lengths/?declared=100&pieces=20,30"))
    _, status, headers = wire.head()
    assert status == 200 and headers["content-length"] == "100"
    # the client gets what there is, then the connection ends: it never waits for more
    assert wire.until_close() == (b"0123456789" * 5)
    assert "the app sent 50 of 100 declared bytes" in wait_for_log(server, "declared bytes")


# -- errors ------------------------------------------------------------------------------


@VARIANT
@MODES
@pytest.mark.parametrize("location", ["error", "plain-error"])
@pytest.mark.parametrize("where", ["before", "first-chunk"])
def test_exception_before_the_headers_is_a_500(
    server: Server, variant: str, mode: str, location: str, where: str
) -> None:
    port = server.ports[mode, variant]
    status, _, body = fetch(port, "GET", f"/{location}/{where}")
    assert status == 500
    assert b"500" in body
    assert b"secret-detail" not in body and b"Traceback" not in body
    assert b"RuntimeError" not in body
    log = wait_for_log(server, "secret-detail-5f1c")
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: raised" in log and "secret-detail-5f1c" in log
    assert "AssertionError" not in log
    # and the app still answers
    assert fetch(port, "GET", f"/{location}/ok")[2] == b"still fine"


CUT = pytest.mark.parametrize("check", ["closed", "no-last-chunk"])


@VARIANT
@MODES
@CUT
@pytest.mark.parametrize("location", ["error", "plain-error"])
def test_exception_mid_stream_cuts_the_answer(
    server: Server, variant: str, mode: str, check: str, location: str
) -> None:
    wire = Wire(server.ports[mode, variant])
    wire.send(request_bytes("GET", f"/{location}/mid"))
    _, status, headers = wire.head()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    body, ended = wire.chunked()
    if check == "no-last-chunk":
        assert not ended  # the client can tell that the answer was cut short
        return
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert wire.closed()  # the connection ends with the answer
    log = wait_for_log(server, "secret-detail-5f1c")
    assert "RuntimeError: raised after 3 chunks" in log
    assert "AssertionError" not in log


@pytest.mark.parametrize("name", ["Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "TE"])
@VARIANT
@MODES
def test_hop_by_hop_header_from_the_app_is_a_500(
    server: Server, variant: str, mode: str, name: str
) -> None:
    port = server.ports[mode, variant]
    status, _, body = fetch(port, "GET", f"/hop/?{name}")
    assert status == 500
    assert b"hop-by-hop" not in body
    assert "hop-by-hop" in wait_for_log(server, "hop-by-hop")


@VARIANT
@MODES
def test_hop_by_hop_header_from_flask_is_a_500(server: Server, variant: str, mode: str) -> None:
    status, _, body = fetch(server.ports[mode, variant], "GET", "/hop-flask/")
    assert status == 500
    assert b"flask with a Connection header" not in body
    assert "hop-by-hop" in wait_for_log(server, "hop-by-hop")


@VARIANT
@MODES
def test_exc_info_before_the_headers_replaces_them(server: Server, variant: str, mode: str) -> None:
    status, headers, body = fetch(server.ports[mode, variant], "GET", "/exc-info/before")
    assert (status, body) == (503, b"replaced by the error answer")
    assert headers["X-First"] is None
    assert_clean_log(server)


@VARIANT
@MODES
@CUT
def test_exc_info_after_the_headers_is_raised_again(
    server: Server, variant: str, mode: str, check: str
) -> None:
    wire = Wire(server.ports[mode, variant])
    wire.send(request_bytes("GET", "/exc-info/after"))
    _, status, _ = wire.head()
    assert status == 200
    body, ended = wire.chunked()
    if check == "no-last-chunk":
        assert not ended
        return
    assert body == b"the headers are out\n"  # and never what came after the error
    assert wire.closed()
    log = wait_for_log(server, "failed-after-headers-81e2")
    assert "ValueError: failed-after-headers-81e2" in log
    assert "AssertionError" not in log


@VARIANT
@MODES
def test_start_response_in_the_first_iteration(server: Server, variant: str, mode: str) -> None:
    status, _, body = fetch(server.ports[mode, variant], "GET", "/lazy/")
    assert (status, body) == (200, b"hello from a generator app!")
    assert_clean_log(server)


@MODES
def test_start_response_twice_without_exc_info_is_an_error(server: Server, mode: str) -> None:
    status, _, body = fetch(server.ports[mode, "app"], "GET", "/exc-info/twice")
    assert status == 500
    assert b"twice" not in body
    assert "already called" in wait_for_log(server, "already called")


@VARIANT
@MODES
@pytest.mark.parametrize("path", ["/write/", "/write/only-write"])
def test_write_callable(server: Server, variant: str, mode: str, path: str) -> None:
    wire = Wire(server.ports[mode, variant])
    wire.send(request_bytes("GET", path))
    _, status, headers = wire.head()
    assert status == 200
    assert wire.body(headers) == b"one two three"
    wire.send(request_bytes("GET", "/hello/", "Connection: close"))
    _, status, headers = wire.head()
    assert wire.body(headers) == b"hello world!"
    wire.close()
    assert_clean_log(server)


# -- concurrency -------------------------------------------------------------------------


def _timed(port: int, path: str) -> tuple[float, int, bytes]:
    started = time.monotonic()
    status, _, body = fetch(port, "GET", path, timeout=10)
    return time.monotonic() - started, status, body


@VARIANT
def test_slow_request_does_not_block_a_fast_one(server: Server, variant: str) -> None:
    """One worker process: the slow request holds one app thread, not the worker."""
    port = server.ports["threaded", variant]
    _timed(port, "/slow/fast")  # warm
    slow: list[Any] = []
    thread = threading.Thread(target=lambda: slow.append(_timed(port, "/slow/slow?ms=1000")))
    thread.start()
    time.sleep(0.15)  # the slow request is in the app now
    fast_elapsed, fast_status, fast_body = _timed(port, "/slow/fast")
    static_elapsed, static_status, static_body = _timed(port, "/static/style.css")
    echo_elapsed, echo_status, _ = _timed(port, "/echo/")
    assert not slow, "the slow request was not in flight"
    thread.join(10)
    assert (fast_status, fast_body) == (200, b"fast")
    assert (static_status, static_body) == (200, STYLE)
    assert echo_status == 200
    assert fast_elapsed < 0.2, fast_elapsed
    assert static_elapsed < 0.2, static_elapsed
    assert echo_elapsed < 0.2, echo_elapsed
    slow_elapsed, slow_status, slow_body = slow[0]
    assert (slow_status, slow_body) == (200, b"slept 1000 ms")
    assert slow_elapsed >= 1.0
    assert_clean_log(server)


def test_inline_app_does_block_its_worker(portico: Any) -> None:
    """The other side of the coin (and proof that the test above can fail): with
    ``wsgi_threads 0`` a sleeping app holds the whole worker."""
    server = portico(
        "worker_processes 1;\nerror_log stderr info;\nevents {{ }}\nhttp {{ access_log off;\n"
        "server {{ listen 127.0.0.1:{port}; wsgi_path {repo}; wsgi_threads 0;\n"
        "location / {{ wsgi_script_name /slow; wsgi tests.apps.slow:app; }} }} }}\n",
        repo=REPO,
    )
    _timed(server.port, "/slow/fast")
    slow: list[Any] = []
    thread = threading.Thread(target=lambda: slow.append(_timed(server.port, "/slow/slow?ms=600")))
    thread.start()
    time.sleep(0.15)
    fast_elapsed, fast_status, _ = _timed(server.port, "/slow/fast")
    thread.join(10)
    assert fast_status == 200
    assert fast_elapsed > 0.3
    assert slow[0][1] == 200


@VARIANT
@MODES
def test_hello(server: Server, variant: str, mode: str) -> None:
    port = server.ports[mode, variant]
    status, headers, body = fetch(port, "GET", "/hello/")
    assert (status, body) == (200, b"hello world!")
    assert headers["Content-Length"] == "12"
    assert headers["Content-Type"].startswith("text/html")
    status, _, body = fetch(port, "GET", "/hello/hello/portico")
    assert (status, body) == (200, b"hello portico!")
    status, _, body = fetch(port, "GET", "/plain-hello/")
    assert (status, body) == (200, b"hello from plain WSGI!")
    status, _, body = fetch(port, "GET", "/hello/nothing-here")
    assert status == 404
    assert_clean_log(server)
