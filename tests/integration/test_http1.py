"""HTTP/1.1 on the wire through a real portico: bad input, keep-alive, pipelining, limits.

One portico process serves the whole module (starting one per corpus file would cost
more than the tests): ``location = /ok`` answers "ok", the root holds ``hello.txt``, and
the limits are small so that the corpus reaches them (``large_client_header_buffers 4 1k``,
``client_max_body_size 1k``, 1 s client timeouts, ``keepalive_timeout 2s``,
``keepalive_requests 3``).

Every invalid request of ``tests/data/requests/invalid`` must get its status with
``Connection: close``, then the close, and nothing else: no traceback, no hang, no dead
worker (the worker pids never change). Every valid one must get its answers and leave
the connection usable: a request sent right behind it is answered too, which is what
proves its body was framed right.

Each file arrives in one write, so in one read (loopback); the unit tests
(tests/unit/test_parser.py) cover the other splits.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Portico, free_port

CORPUS = Path(__file__).resolve().parent.parent / "data" / "requests"
HELLO = b"hello, portico\n"
TIMEOUT = 5.0  # for any single read: nothing here should take that long

CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    large_client_header_buffers 4 1k;
    client_max_body_size 1k;
    client_header_timeout 1s;
    client_body_timeout 1s;
    keepalive_timeout 2s;
    keepalive_requests 3;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location = /ok {{ return 200 "ok"; }}
    }}
}}
"""

GET_OK = b"GET /ok HTTP/1.1\r\nHost: example.com\r\n\r\n"


# -- the server --------------------------------------------------------------------------


class Server:
    def __init__(self, process: Portico) -> None:
        self.process = process
        self.port = process.port
        self.workers = wait_for_workers(process)

    def logs(self) -> str:
        error_log = self.process.directory / "error.log"
        text = error_log.read_text(errors="replace") if error_log.exists() else ""
        return text + self.process.log()

    def check_healthy(self) -> None:
        """The worker is the one we started with, it answers, and nothing crashed."""
        with Client(self.port) as client:
            client.send(GET_OK)
            response = client.response()
        assert (response.status, response.body) == (200, b"ok")
        assert self.process.worker_pids() == self.workers, "a worker died and was replaced"
        assert "Traceback" not in self.logs()


def wait_for_workers(process: Portico) -> list[int]:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        pids = process.worker_pids()
        if pids:
            return pids
        time.sleep(0.05)
    raise TimeoutError("portico started no worker")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("http1")
    (root / "www").mkdir()
    (root / "www" / "hello.txt").write_bytes(HELLO)
    directory = root / "portico"
    directory.mkdir()
    port = free_port()
    config = CONFIG.format(port=port, root=root, dir=directory)
    process = Portico(directory, config, {"port": port})
    try:
        yield Server(process)
    finally:
        process.stop()


# -- a client that reads answers one at a time ------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lowercase names, repeated fields joined with ", "
    body: bytes
    head: bytes


class Client:
    """One connection: send bytes, read answers as a user agent would."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.eof = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.eof:
            raise ConnectionError(f"closed by the server; unread: {self.buffer[:200]!r}")
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buffer += data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _take_line(self, end: bytes = b"\r\n") -> bytes:
        while end not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(end)
        return line

    def response(self, method: str = "GET") -> Response:
        head = self._take_line(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status_text, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        status = int(status_text)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"bad header line {line!r}"
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if status < 200 or status in (204, 304) or method == "HEAD":
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self._take_line().split(b";")[0], 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            while self._take_line():
                pass  # trailers
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:
            while not self.eof:
                self._fill()
            body, self.buffer = self.buffer, b""
        return Response(status, headers, body, head)

    def poll(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for bytes or the close; keep what came in the buffer."""
        if self.eof:
            return True
        self.sock.settimeout(seconds)
        try:
            self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)
        return True

    def wait_closed(self, timeout: float) -> tuple[bool, bytes]:
        """Whether the server closes within ``timeout``, and what it sent meanwhile."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.poll(remaining):
                break
        data, self.buffer = self.buffer, b""
        return self.eof, data


# -- the corpus -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int
    spec: dict


def corpus(kind: str) -> list[Case]:
    cases = []
    for path in sorted((CORPUS / kind).glob("*.http")):
        if kind == "valid":
            spec = json.loads(path.with_suffix(".json").read_text())
            cases.append(Case(path.stem, path.read_bytes(), 0, spec))
        else:
            name, status = path.name.removesuffix(".http").rsplit(".", 1)
            cases.append(Case(name, path.read_bytes(), int(status), {}))
    return cases


@pytest.mark.parametrize("case", corpus("invalid"), ids=lambda c: f"{c.name}-{c.status}")
def test_invalid_request_gets_its_status_then_the_close(server: Server, case: Case) -> None:
    with Client(server.port) as client:
        client.send(case.data)
        response = client.response()
        closed, rest = client.wait_closed(3.0)
    assert response.status == case.status
    assert response.headers.get("connection") == "close"
    assert closed, "the connection stayed open after an answer that said close"
    assert rest == b"", f"more than one answer: {rest[:300]!r}"
    assert b"Traceback" not in response.body
    server.check_healthy()


def check_answers(server: Server, case: Case, pieces: list[bytes] | None = None) -> None:
    """Send a valid corpus file (at once, or in ``pieces`` with a pause between them),
    plus a request right behind it when the connection should stay open, and check
    every answer."""
    requests = case.spec["requests"]
    statuses = case.spec["responses"]
    last_keeps = requests[-1]["keep_alive"] and not case.spec.get("server_closes", False)
    # keepalive_requests 3: a fourth request on the connection would not be answered
    follow = last_keeps and len(requests) < 3
    with Client(server.port) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces or [case.data]:
            client.send(piece)
            if pieces:
                time.sleep(0.002)
        if follow:
            client.send(GET_OK)
        for number, (request, status) in enumerate(zip(requests, statuses, strict=True), 1):
            response = client.response(request["method"])
            assert response.status == status, f"answer {number}"
            assert b"Traceback" not in response.body
            if status == 200 and request["method"] != "HEAD":
                target = request["target"]
                assert response.body == (HELLO if "hello.txt" in target else b"ok"), target
        if follow:
            # the request behind it is read as a request: the body before was framed right
            response = client.response()
            assert (response.status, response.body) == (200, b"ok")
            third = len(requests) + 1 == 3
            assert response.headers["connection"] == ("close" if third else "keep-alive")
        else:
            assert response.headers["connection"] == "close"
            closed, rest = client.wait_closed(3.0)
            assert closed and rest == b""
    assert server.process.worker_pids() == server.workers


@pytest.mark.parametrize("case", corpus("valid"), ids=lambda c: c.name)
def test_valid_request_is_answered_and_framed_right(server: Server, case: Case) -> None:
    check_answers(server, case)


SPLIT_CASES = ["get-with-body", "post-chunked", "chunked-extensions", "pipelined-three"]


@pytest.mark.parametrize(
    "case", [c for c in corpus("valid") if c.name in SPLIT_CASES], ids=lambda c: c.name
)
def test_valid_request_in_small_reads_gets_the_same_answers(server: Server, case: Case) -> None:
    # the connection sees the head before the body, a body in pieces, a CRLF cut in two
    rng = random.Random(case.name)
    pieces, i = [], 0
    while i < len(case.data):
        n = rng.randint(1, 12)
        pieces.append(case.data[i : i + n])
        i += n
    check_answers(server, case, pieces)


# -- keep-alive and pipelining ------------------------------------------------------------


def test_keep_alive_reuses_the_connection(server: Server) -> None:
    with Client(server.port) as client:
        for _ in range(2):
            client.send(GET_OK)
            response = client.response()
            assert (response.status, response.body) == (200, b"ok")
            assert response.headers["connection"] == "keep-alive"


def test_a_request_seen_before_that_ends_an_unfinished_head_is_read_as_its_end(
    server: Server,
) -> None:
    # a whole request in one read is remembered (parser.py), and a connection with
    # nothing pending takes it from there; these bytes come to one with a head begun
    with Client(server.port) as client:
        client.send(GET_OK)
        assert client.response().body == b"ok"
        client.send(b"GET /hello.txt HTTP/1.1\r\nX-Pad: ")
        time.sleep(0.2)  # read apart
        client.send(GET_OK)  # the X-Pad value, a Host line, the end of the head
        response = client.response()
    assert (response.status, response.body) == (200, HELLO)


def test_the_body_of_an_answered_request_is_never_taken_for_a_request(server: Server) -> None:
    # a body answered before it came (return) is read and dropped; if its bytes are
    # those of a request read before (remembered, parser.py), they are still a body
    hello = b"GET /hello.txt HTTP/1.1\r\nHost: example.com\r\n\r\n"
    with Client(server.port) as client:
        client.send(hello)  # remembered
        assert client.response().body == HELLO
    with Client(server.port) as client:
        client.send(
            b"POST /ok HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n" % len(hello)
        )
        assert client.response().body == b"ok"
        client.send(hello)  # the body, in a read of its own
        assert not client.poll(0.3), f"the body was answered: {client.buffer[:80]!r}"
        client.send(GET_OK)
        response = client.response()
    assert (response.status, response.body) == (200, b"ok")


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    with Client(server.port) as client:
        client.send(
            b"GET /hello.txt HTTP/1.1\r\nHost: example.com\r\n\r\n"
            b"GET /ok HTTP/1.1\r\nHost: example.com\r\n\r\n"
            b"GET /missing HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        answers = [client.response() for _ in range(3)]
    assert [(r.status, r.body[:5]) for r in answers] == [
        (200, b"hello"),
        (200, b"ok"),
        (404, b"<html"),
    ]


def test_keepalive_requests_closes_after_the_third(server: Server) -> None:
    with Client(server.port) as client:
        seen = []
        for _ in range(3):
            client.send(GET_OK)
            seen.append(client.response().headers["connection"])
        closed, rest = client.wait_closed(3.0)
    assert seen == ["keep-alive", "keep-alive", "close"]
    assert closed and rest == b""


def test_keepalive_timeout_closes_an_idle_connection(server: Server) -> None:
    with Client(server.port) as client:
        client.send(GET_OK)
        assert client.response().status == 200
        start = time.monotonic()
        closed, rest = client.wait_closed(5.0)
        idle = time.monotonic() - start
    assert closed and rest == b"", "an idle connection gets closed quietly"
    assert 1.5 <= idle <= 3.5, f"closed after {idle:.2f}s with keepalive_timeout 2s"


def test_http10_closes_unless_asked_to_keep_alive(server: Server) -> None:
    with Client(server.port) as client:
        client.send(b"GET /ok HTTP/1.0\r\n\r\n")
        response = client.response()
        closed, _ = client.wait_closed(3.0)
    assert (response.status, response.headers["connection"], closed) == (200, "close", True)

    with Client(server.port) as client:
        for _ in range(2):
            client.send(b"GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = client.response()
            assert (response.status, response.body) == (200, b"ok")
            assert response.headers["connection"] == "keep-alive"


def test_date_and_server_headers(server: Server) -> None:
    with Client(server.port) as client:
        client.send(GET_OK + b"GET /missing HTTP/1.1\r\nHost: example.com\r\n\r\n")
        answers = [client.response(), client.response()]
    with Client(server.port) as client:
        client.send(b"BAD\x00\r\n\r\n")
        answers.append(client.response())
    assert [r.status for r in answers] == [200, 404, 400]
    for response in answers:
        assert response.headers["server"].startswith("portico")
        date = email.utils.parsedate_to_datetime(response.headers["date"])
        assert response.headers["date"].endswith(" GMT")
        assert abs(date.timestamp() - time.time()) < 5


# -- bodies --------------------------------------------------------------------------------


def test_chunked_body_in_pieces_then_the_next_request(server: Server) -> None:
    with Client(server.port) as client:
        client.send(b"POST /ok HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"5\r\nhel", b"lo\r\n", b"6;ext=1\r\n worl", b"d\r\n0\r", b"\n\r\n"):
            time.sleep(0.02)
            client.send(piece)
        client.send(GET_OK)
        answers = [client.response(), client.response()]
    assert [(r.status, r.body) for r in answers] == [(200, b"ok"), (200, b"ok")]


def test_content_length_over_client_max_body_size_gets_413(server: Server) -> None:
    for body_sent in (b"", b"x" * 2000):
        with Client(server.port) as client:
            client.send(
                b"POST /ok HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2000\r\n\r\n"
                + body_sent
            )
            response = client.response()
            closed, rest = client.wait_closed(3.0)
        assert response.status == 413
        assert response.headers["connection"] == "close"
        assert closed and rest == b""
    server.check_healthy()


def test_chunked_body_over_client_max_body_size_is_drained_when_not_read(server: Server) -> None:
    # nginx checks client_max_body_size on a chunked body only as it reads it; a location
    # that answers without reading (return, static) drops the body, and then the
    # connection goes on. (A 413 for chunked bodies needs a handler that reads them.)
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    with Client(server.port) as client:
        client.send(
            b"POST /ok HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk * 3
            + b"0\r\n\r\n"
            + GET_OK
        )
        answers = [client.response(), client.response()]
    assert [(r.status, r.body) for r in answers] == [(200, b"ok"), (200, b"ok")]


def test_early_answer_to_expect_still_reads_the_body(server: Server) -> None:
    # the client sends the body after the final answer (it may: RFC 9110 10.1.1); the
    # body must not be taken for the next request
    with Client(server.port) as client:
        client.send(
            b"POST /ok HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n"
            b"Content-Length: 15\r\n\r\n"
        )
        first = client.response()
        if first.status == 100:  # allowed; portico answers at once when it needs no body
            first = client.response()
        client.send(b"GET /x HTTP/1.1" + GET_OK)
        second = client.response()
    assert [(first.status, first.body), (second.status, second.body)] == [(200, b"ok")] * 2


def test_stalled_body_after_an_early_answer_is_closed_quietly(server: Server) -> None:
    # the answer needs no body; a client that stops sending it holds the connection
    # for a bounded time, and gets no second answer
    with Client(server.port) as client:
        client.send(b"POST /ok HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n0123")
        response = client.response()
        start = time.monotonic()
        closed, rest = client.wait_closed(5.0)
        waited = time.monotonic() - start
    assert (response.status, response.body) == (200, b"ok")
    assert closed and rest == b"", f"after {waited:.2f}s: {rest[:200]!r}"
    assert waited <= 3.5


def test_bad_chunk_after_an_early_answer_closes_without_a_second_answer(server: Server) -> None:
    with Client(server.port) as client:
        client.send(b"POST /ok HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        response = client.response()
        client.send(b"5\r\nhelloX\r\n0\r\n\r\n")
        closed, rest = client.wait_closed(3.0)
    assert (response.status, response.body) == (200, b"ok")
    assert closed
    assert rest == b"", f"a second answer to one request: {rest[:200]!r}"


def test_request_pipelined_before_a_bad_one_is_answered(server: Server) -> None:
    with Client(server.port) as client:
        client.send(GET_OK + b"GET /ok HTTP/9.9\r\nHost: example.com\r\n\r\n")
        first = client.response()
        assert (first.status, first.body) == (200, b"ok")
        second = client.response()
    assert (second.status, second.headers["connection"]) == (505, "close")


# -- timeouts --------------------------------------------------------------------------------


def test_slow_header_gets_408(server: Server) -> None:
    with Client(server.port) as client:
        client.send(b"GET /ok HTTP/1.1\r\nHost: exa")
        start = time.monotonic()
        response = client.response()
        waited = time.monotonic() - start
        closed, rest = client.wait_closed(3.0)
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert closed and rest == b""
    assert 0.7 <= waited <= 2.5, f"408 after {waited:.2f}s with client_header_timeout 1s"


def test_dribbled_header_still_gets_408_in_time(server: Server) -> None:
    # client_header_timeout bounds the whole head, not the gap between two reads
    with Client(server.port) as client:
        client.send(b"GET /ok HTTP/1.1\r\n")
        start = time.monotonic()
        for byte in b"X-Slow: 1234567890":
            if client.poll(0.15):
                break  # the answer (or the close) came
            try:
                client.send(bytes([byte]))
            except OSError:
                break
        response = client.response()
        waited = time.monotonic() - start
    assert response.status == 408
    assert waited <= 2.5, f"408 after {waited:.2f}s of dribbling with a 1s timeout"
    server.check_healthy()


def test_idle_connection_without_a_request_is_closed(server: Server) -> None:
    # a connection that never sends a byte costs client_header_timeout, then a quiet close
    with Client(server.port) as client:
        start = time.monotonic()
        closed, rest = client.wait_closed(5.0)
        waited = time.monotonic() - start
    assert closed, "a silent connection was kept open"
    assert 0.7 <= waited <= 3.0, f"closed after {waited:.2f}s with client_header_timeout 1s"
    assert rest == b"", "nothing was asked, nothing is answered (nginx closes quietly)"


def test_a_rejected_request_logs_its_body_and_whole_sizes_apart(portico) -> None:  # type: ignore[no-untyped-def]
    server = portico(
        "events {{}} http {{ log_format sizes '$status $body_bytes_sent $bytes_sent "
        "$connection_requests $sent_http_content_length';\n"
        "access_log {dir}/access.log sizes;\n"
        'server {{ listen 127.0.0.1:{port}; return 200 "x"; }} }}'
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # 400
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    server.stop()
    line = (Path(server.directory) / "access.log").read_text().splitlines()[-1]
    # the rejected request counts on its connection, and its answer's head is known
    assert line == f"400 {len(body)} {len(answer)} 1 {len(body)}"


def test_sent_http_variables_read_the_head_as_sent(portico, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "page.html").write_bytes(b"<p>hi</p>")
    server = portico(
        "events {{}} http {{\n"
        "log_format sent '$uri|$sent_http_content_type|$sent_http_content_length|"
        "$sent_http_connection|$sent_http_x_extra|$sent_http_missing';\n"
        "access_log {dir}/access.log sent;\n"
        "server {{ listen 127.0.0.1:{port}; add_header X-Extra ' two words ';\n"
        "location / {{ root {root}; }} location /gone {{ return 404; }} }} }}"
    )
    for path in ("/page.html", "/gone"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", path, headers={"Connection": "close"})
        conn.getresponse().read()
        conn.close()
    server.stop()
    lines = (Path(server.directory) / "access.log").read_text().splitlines()
    # what was sent, the value trimmed; "-" for a header not sent (add_header without
    # "always" adds nothing to a 404)
    assert lines[0] == "/page.html|text/html|9|close|two words|-"
    assert re.fullmatch(r"/gone\|text/html\|\d+\|close\|-\|-", lines[1]), lines[1]


def test_a_root_with_a_trailing_slash_names_files_as_nginx_does(portico, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "page.html").write_bytes(b"<p>hi</p>")
    server = portico(
        "events {{}} http {{ log_format files '$document_root|$request_filename';\n"
        "access_log {dir}/access.log files;\n"
        "server {{ listen 127.0.0.1:{port}; root {root}/; }} }}"
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/page.html")
    assert conn.getresponse().read() == b"<p>hi</p>"
    conn.close()
    server.stop()
    line = (Path(server.directory) / "access.log").read_text().splitlines()[-1]
    assert line == f"{tmp_path}|{tmp_path}/page.html"


def test_file_variables_follow_root_alias_and_the_uri_in_every_location(  # type: ignore[no-untyped-def]
    portico, backends, tmp_path: Path
) -> None:
    """nginx derives $document_root and $request_filename from the location's root or
    alias and the current URI, whatever the location does with the request."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.gif").write_bytes(b"GIF89a")
    backend = backends("a")
    server = portico(
        "events {{}} http {{ log_format files '$uri|$document_root|$request_filename';\n"
        "access_log {dir}/access.log files;\n"
        "server {{ listen 127.0.0.1:{port}; root {root};\n"
        "location /p/ {{ proxy_pass http://{a}; }}\n"
        "location = /r {{ return 204; }}\n"
        "location /tf/ {{ try_files $uri /r; }}\n"
        "location /i/ {{ alias {root}/img/; }} }} }}",
        a=backend.address,
    )
    for path, status in (("/p/x", 200), ("/r", 204), ("/tf/nothere", 204), ("/i/a.gif", 200)):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == status, path
    server.stop()
    root = str(tmp_path)
    assert (Path(server.directory) / "access.log").read_text().splitlines() == [
        f"/p/x|{root}|{root}/p/x",
        f"/r|{root}|{root}/r",
        f"/r|{root}|{root}/r",  # try_files fell back to /r: the file of the new URI
        f"/i/a.gif|{root}/img/|{root}/img/a.gif",
    ]


def test_static_answers_in_nginx_order_and_head_takes_ranges(portico, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_bytes(b"0123456789abcdefghijklm")
    (tmp_path / "dir").mkdir()
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port}; server_name named.test; "
        "root {root}; }} }}"
    )

    def ask(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(data)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer

    def status(data: bytes) -> bytes:
        return ask(data).split(b"\r\n", 1)[0]

    close = b"Host: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    # the file is looked for before the method: missing 404, a folder 301, a file 405
    assert status(b"POST /missing HTTP/1.1\r\n" + close) == b"HTTP/1.1 404 Not Found"
    assert status(b"POST /dir HTTP/1.1\r\n" + close) == b"HTTP/1.1 301 Moved Permanently"
    assert status(b"POST /a.txt HTTP/1.1\r\n" + close) == b"HTTP/1.1 405 Method Not Allowed"
    # HEAD with a Range: the 206 a GET would get, without its body
    head = ask(b"HEAD /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-4\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ") and head.endswith(b"\r\n\r\n")
    assert b"Content-Range: bytes 0-4/23\r\n" in head and b"Content-Length: 5\r\n" in head
    # no Host (HTTP/1.0): the redirect names the address the request came to, not the
    # server_name (nginx's server_name_in_redirect off)
    redirect = ask(b"GET /dir HTTP/1.0\r\n\r\n")
    assert f"Location: http://127.0.0.1:{server.port}/dir/\r\n".encode() in redirect


def test_merge_slashes_off_keeps_the_slashes_of_the_uri(portico) -> None:  # type: ignore[no-untyped-def]
    server = portico(
        "events {{}} http {{\n"
        "server {{ listen 127.0.0.1:{port}; location / {{ return 200 'uri=$uri'; }}\n"
        "          location /sub/ {{ return 200 'sub=$uri'; }} }}\n"
        "server {{ listen 127.0.0.1:{port2}; merge_slashes off;\n"
        "          location / {{ return 200 'uri=$uri'; }}\n"
        "          location /sub/ {{ return 200 'sub=$uri'; }} }} }}",
        ports=2,
    )
    answers = []
    for port in (server.port, server.ports["port2"]):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "//sub//x")
        answers.append(conn.getresponse().read())
        conn.close()
    assert answers == [b"sub=/sub/x", b"uri=//sub//x"]


def test_error_page_and_try_files_redirects_take_their_own_arguments(portico) -> None:  # type: ignore[no-untyped-def]
    """As nginx: the URI redirected to brings its arguments, none if it has none."""
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port}; root {root};\n"
        "error_page 404 /ep;\n"
        "location = /ep {{ return 200 'ep args=$args'; }}\n"
        "location = /fb {{ return 200 'fb args=$args'; }}\n"
        "location /plain/ {{ try_files $uri /fb; }}\n"
        "location /kept/ {{ try_files $uri /fb?$args; }} }} }}"
    )
    answers = []
    for path in ("/missing?a=1", "/plain/x?a=1", "/kept/x?a=1"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", path)
        answers.append(conn.getresponse().read())
        conn.close()
    assert answers == [b"ep args=", b"fb args=", b"fb args=a=1"]
