"""Servers by Host, locations by URI, return, error_page and variables, end to end."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, parse_response, raw_request

CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ }}
http {{
    log_format short '$status $request_method $uri $host "$http_x_test" $server_name %s 100%';
    access_log {dir}/access.log short;
    server {{
        listen 127.0.0.1:{port};
        server_name first.test;
        return 200 "first server";
    }}
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name default.test;
        location / {{ return 200 "default server: $host $uri?$args"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name *.wild.test;
        location / {{ return 200 "wildcard: $host"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name ~^(?<sub>[a-z]+)\\.regex\\.test$;
        location / {{ return 200 "regex: $sub"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name app.test;
        root {root}/www;
        add_header X-Frame-Options DENY;
        location = /exact {{ return 200 "exact"; }}
        location /static/ {{ return 200 "prefix static"; }}
        location ^~ /static/keep/ {{ return 200 "caret static"; }}
        location ~ \\.php$ {{ return 200 "regex php $1"; }}
        location ~* ^/users/(\\d+)$ {{ return 200 "user $1"; }}
        location /moved {{ return 301 http://$host/new$request_uri; }}
        location /gone {{ return 410; }}
        location /teapot {{ return 418 "short and stout"; }}
        location /found {{ return https://example.org/; }}
        location /errors/ {{
            error_page 404 /custom404.html;
            error_page 500 502 =200 /fallback;
            error_page 418 @named;
            location /errors/boom {{ return 502; }}
            location /errors/tea {{ return 418; }}
        }}
        location = /custom404.html {{ add_header X-Page custom always; }}
        location = /fallback {{ return 200 "fallback answer"; }}
        location @named {{ return 200 "named location"; }}
        location /redirect-error/ {{ error_page 404 http://example.org/missing; }}
        location /always/ {{ add_header X-Always yes always; return 404; }}
    }}
}}
"""


@pytest.fixture
def server(tmp_path: Path, portico):
    www = tmp_path / "www"
    www.mkdir()
    (www / "custom404.html").write_text("custom not found page")
    return portico(CONFIG)


def get(server, path: str, host: str | None = "app.test", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    all_headers = dict(headers or {})
    if host is not None:
        all_headers["Host"] = host
    conn.request("GET", path, headers=all_headers)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response, body


@pytest.mark.parametrize(
    ("host", "body"),
    [
        ("first.test", "first server"),
        ("FIRST.test:8080", "first server"),
        ("default.test", "default server: default.test /x?y=1"),
        ("nobody.test", "default server: nobody.test /x?y=1"),
        ("a.b.wild.test", "wildcard: a.b.wild.test"),
        ("alice.regex.test", "regex: alice"),
    ],
)
def test_server_by_host(server, host: str, body: str) -> None:
    assert get(server, "/x?y=1", host=host)[1] == body


def test_request_without_host_goes_to_the_default_server(server) -> None:
    data = raw_request(server.port, b"GET /x HTTP/1.0\r\n\r\n")
    status, _, body = parse_response(data)
    assert status == 200 and body.startswith(b"default server:")


def test_absolute_form_target_names_the_host(server) -> None:
    data = raw_request(
        server.port, b"GET http://first.test/ HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n"
    )
    assert parse_response(data)[2] == b"first server"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/exact", "exact"),
        ("/exact/more", ""),
        ("/static/a.php", "regex php "),
        ("/static/keep/a.php", "caret static"),
        ("/static/a.css", "prefix static"),
        ("/x.php", "regex php "),
        ("/USERS/42", "user 42"),
        ("/teapot", "short and stout"),
    ],
)
def test_locations(server, path: str, body: str) -> None:
    response, text = get(server, path)
    if body:
        assert text == body
    else:
        assert response.status == 404


def test_return_redirects_and_codes(server) -> None:
    response, text = get(server, "/moved?a=b")
    assert response.status == 301
    assert response.getheader("Location") == "http://app.test/new/moved?a=b"
    assert "301 Moved Permanently" in text
    response, _ = get(server, "/found")
    assert response.status == 302 and response.getheader("Location") == "https://example.org/"
    response, text = get(server, "/gone")
    assert response.status == 410 and "<h1>410 Gone</h1>" in text
    assert response.getheader("Content-Type") == "text/html"
    response, _ = get(server, "/teapot")
    assert response.status == 418 and response.getheader("Content-Type") == "text/plain"


def test_error_pages(server) -> None:
    response, text = get(server, "/errors/nothing-here")
    assert (response.status, text) == (404, "custom not found page")
    assert response.getheader("X-Page") == "custom"
    response, text = get(server, "/errors/boom")
    assert (response.status, text) == (200, "fallback answer")
    response, text = get(server, "/errors/tea")
    assert (response.status, text) == (418, "named location")
    response, _ = get(server, "/redirect-error/none")
    assert response.status == 302
    assert response.getheader("Location") == "http://example.org/missing"


def test_add_header_by_status(server) -> None:
    response, _ = get(server, "/exact")
    assert response.getheader("X-Frame-Options") == "DENY"
    response, _ = get(server, "/gone")
    assert response.getheader("X-Frame-Options") is None  # 410: not without "always"
    response, _ = get(server, "/always/")
    assert response.status == 404 and response.getheader("X-Always") == "yes"


def test_log_format_with_variables(server) -> None:
    get(server, "/exact", headers={"X-Test": 'a "b"'})
    get(server, "/exact?second")
    server.stop()
    lines = (Path(server.directory) / "access.log").read_text().splitlines()
    # escaped as nginx does; a literal % stays as written; an empty value is "-"
    assert '200 GET /exact app.test "a \\x22b\\x22" app.test %s 100%' in lines
    assert '200 GET /exact app.test "-" app.test %s 100%' in lines


def test_ipv6_and_unix_listeners(tmp_path: Path, portico) -> None:
    try:
        v6_port = free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    sock_path = tmp_path / "p.sock"
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port}; listen [::1]:{v6}; "
        'listen unix:{sock}; location / {{ return 200 "on $server_addr"; }} }} }}',
        v6=v6_port,
        sock=sock_path,
    )
    conn = http.client.HTTPConnection("::1", v6_port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"on ::1"
    conn.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert parse_response(data)[2] == b"on unix:" + str(sock_path).encode()
    assert server.process.poll() is None


def test_wildcard_and_specific_address_on_one_port(portico) -> None:
    server = portico(
        "events {{}} http {{"
        ' server {{ listen {port}; return 200 "wildcard"; }}'
        ' server {{ listen 127.0.0.2:{port}; return 200 "specific"; }} }}'
    )
    for address, body in (("127.0.0.1", b"wildcard"), ("127.0.0.2", b"specific")):
        conn = http.client.HTTPConnection(address, server.port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == body
        conn.close()
    # the same bytes to both addresses, again and again: the address still chooses
    # (a request read before goes the way it went only where Host alone decides)
    same = b"GET / HTTP/1.1\r\nHost: same.test\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as wildcard,
        socket.create_connection(("127.0.0.2", server.port), timeout=5) as specific,
    ):
        for _ in range(3):
            for sock, body in ((wildcard, b"wildcard"), (specific, b"specific")):
                sock.sendall(same)
                answer = b""
                while not answer.endswith(body):
                    chunk = sock.recv(4096)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("host", ["a/../../data", "..", "a b", "x\\y", ".hidden"])
def test_an_invalid_host_gets_400(server, host: str) -> None:
    data = raw_request(server.port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert parse_response(data)[0] == 400


def test_a_redirect_to_a_path_is_made_absolute(portico) -> None:  # type: ignore[no-untyped-def]
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port};\n"
        "  location /old {{ return 301 /new; }}\n"
        "  location /rel {{ absolute_redirect off; return 302 /there; }} }} }}"
    )
    response, _ = get(server, "/old", host="example.test")
    assert response.getheader("Location") == f"http://example.test:{server.port}/new"
    response, _ = get(server, "/rel", host="example.test")
    assert response.getheader("Location") == "/there"


def test_access_log_lines_wait_for_their_flush_time(portico) -> None:  # type: ignore[no-untyped-def]
    server = portico(
        "events {{}} http {{ access_log {dir}/slow.log combined buffer=64k flush=3s;\n"
        'server {{ listen 127.0.0.1:{port}; return 200 "x"; }} }}'
    )
    log = Path(server.directory) / "slow.log"
    get(server, "/one")
    time.sleep(1.5)  # past the default 1 s, short of flush=3s
    assert log.read_text() == ""
    deadline = time.monotonic() + 5
    while not log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert '"GET /one HTTP/1.1" 200' in log.read_text()
