"""Variables are compiled once and rendered from a request."""

from __future__ import annotations

import base64
import re
import time

import pytest

from portico.http.parser import RequestHead, RequestReader
from portico.http.request import Request
from portico.variables import UnknownVariable, compile_template


class Conn:
    remote_addr = "127.0.0.5"
    remote_port = 4242
    server_addr = "127.0.0.1"
    server_port = "8080"
    number = 7
    requests = 3


class FakeRequest:
    """A request as the getters see it (plain attributes)."""

    conn = Conn()
    method = "GET"
    target = b"/a%20b?x=1&y=2"
    path = "/a b"
    query = "x=1&y=2"
    version = "1.1"
    host = "example.com"
    server_name = "srv"
    headers = {"user-agent": "curl/8", "x-forwarded-for": "10.0.0.1", "cookie": "a=1; b=2"}
    status = 200
    sent_head = (
        b"HTTP/1.1 200 OK\r\nServer: p\r\nCONTENT-TYPE: text/html \r\nX-Two: 1\r\nX-Two: 2\r\n\r\n"
    )
    captures = re.match(r"/(?P<first>\w)(.*)", "/a b")
    server_captures = None
    head = RequestHead("GET", target, version, [], headers, True, None, False, False)


@pytest.mark.parametrize(
    ("source", "rendered"),
    [
        ("plain", "plain"),
        ("$host", "example.com"),
        ("${host}x", "example.comx"),
        ("$scheme://$host$request_uri", "http://example.com/a%20b?x=1&y=2"),
        ("$remote_addr:$remote_port", "127.0.0.5:4242"),
        ("$uri?$args", "/a b?x=1&y=2"),
        ("$request_method $server_protocol $server_port", "GET HTTP/1.1 8080"),
        ("$http_user_agent|$http_missing|", "curl/8||"),
        ("$arg_y $arg_z.", "2 ."),
        ("$cookie_b", "2"),
        ("$sent_http_content_type|$sent_http_x_two|$sent_http_missing", "text/html|1|"),
        ("$1|$2|$first", "a| b|a"),
        ("$proxy_add_x_forwarded_for", "10.0.0.1, 127.0.0.5"),
        ("$request", "GET /a%20b?x=1&y=2 HTTP/1.1"),
        ("$is_args", "?"),
        ("cost: $5", "cost: "),
    ],
)
def test_render(source: str, rendered: str) -> None:
    assert compile_template(source, captures=["first"]).render(FakeRequest()) == rendered


def test_request_is_the_line_as_received_until_the_method_changes() -> None:
    reader = RequestReader()
    reader.feed(b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    request = Request(Conn(), reader.events[0], time.time())  # type: ignore[arg-type]
    template = compile_template("$request")
    assert template.render(request) == request.line == "POST /a%20b?x=1 HTTP/1.1"
    request.method = "GET"  # as an error_page redirect makes it
    assert template.render(request) == request.line == "GET /a%20b?x=1 HTTP/1.1"


def test_constant_templates_are_known() -> None:
    assert compile_template("text").is_constant
    assert not compile_template("$host").is_constant


def test_unknown_variable_is_a_load_time_error() -> None:
    with pytest.raises(UnknownVariable, match='unknown "nope" variable'):
        compile_template("a $nope b")


def test_named_capture_must_be_declared() -> None:
    with pytest.raises(UnknownVariable):
        compile_template("$user")
    assert compile_template("$user", captures=["user"]).variables == ("user",)


def _basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    ("authorization", "user"),
    [
        (_basic(b"alice:s3cret"), "alice"),
        ("basic " + base64.b64encode(b"bob:x:y").decode(), "bob"),  # any case, first colon
        (_basic(b"no-colon"), ""),
        (_basic(b":password"), ""),  # nginx: an empty user is no user
        ("Basic !!notbase64", ""),
        ("Bearer abc.def", ""),
        ("", ""),
    ],
)
def test_remote_user_is_the_basic_auth_user(authorization: str, user: str) -> None:
    request = FakeRequest()
    request.headers = {"authorization": authorization} if authorization else {}
    assert compile_template("$remote_user").render(request) == user


def test_log_times_are_now_in_nginx_formats() -> None:
    request = FakeRequest()
    request.start = 0.0  # the request's start does not matter: the time of the write does
    iso = compile_template("$time_iso8601").render(request)
    local = compile_template("$time_local").render(request)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", iso), iso
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", local), local
    assert iso[:4] == local[7:11] == time.strftime("%Y")


def test_request_length_counts_every_byte_of_a_request_head() -> None:
    raw = b"GET /path?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t/1\r\n\r\n"
    reader = RequestReader()
    reader.feed(raw)
    request = Request(FakeRequest.conn, reader.events[0], 0.0)  # type: ignore[arg-type]
    assert compile_template("$request_length").render(request) == str(len(raw))
