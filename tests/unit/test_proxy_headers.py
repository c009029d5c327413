"""Proxy header rewriting (portico/proxy/headers.py): pure, fed with fake requests.

``RequestTemplate`` decides the request line and head sent upstream, ``ResponseFilter``
the upstream headers passed back. Both are built once per location from the config
(``compile_request``, ``compile_response``), so these tests build them the same way.
"""

from __future__ import annotations

import pytest

from portico.config.directives import ProxyPass
from portico.http.uri import parse_target
from portico.proxy.headers import (
    HIDDEN_BY_DEFAULT,
    HOP_BY_HOP,
    RequestTemplate,
    compile_request,
    compile_response,
    connection_tokens,
    redirect_rules,
)
from portico.variables import compile_template


class FakeBinding:
    merge_slashes = True


class FakeConn:
    remote_addr = "127.0.0.9"
    remote_port = 40000
    binding = FakeBinding()


class FakeHead:
    def __init__(self, raw_headers: list[tuple[bytes, bytes]], shared: bool = True) -> None:
        self.raw_headers = raw_headers
        self.shared = shared  # as parser.py marks the heads it remembers


class FakeRequest:
    """What the templates read of a request: its target, path, query and headers."""

    def __init__(
        self,
        target: bytes = b"/",
        path: str | None = None,
        query: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        redirects: int = 0,
        host: str = "example.test",
        proxy_host: str = "app",
    ) -> None:
        raw_path, _, raw_query = target.partition(b"?")
        self.target = target
        self.path = path if path is not None else raw_path.decode()
        self.query = query if query is not None else raw_query.decode()
        self.redirects = redirects
        self.method = "GET"
        self.host = host
        self.server_name = "server.test"
        self.proxy_host = proxy_host
        self.conn = FakeConn()
        pairs = headers if headers is not None else [("Host", host)]
        self.head = FakeHead([(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs])
        self.headers: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value


def template(
    uri: str | None = None,
    prefix: str = "/",
    set_headers: list[tuple[str, str]] | None = None,
    keepalive: bool = False,
) -> RequestTemplate:
    compiled = [(name, compile_template(value)) for name, value in (set_headers or [])]
    return compile_request(uri, prefix, compiled, keepalive=keepalive)


def head_lines(
    tmpl: RequestTemplate,
    request: FakeRequest,
    method: str = "GET",
    body_length: int | None = None,
    chunked: bool = False,
    upgrade: str | None = None,
) -> list[str]:
    """The head as lines, after checking its framing (one CRLF per line, CRLF CRLF end)."""
    head = tmpl.head(request, method, tmpl.target(request), body_length, chunked, upgrade)
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    assert all(lines), head
    return lines


def header_values(lines: list[str], name: str) -> list[str]:
    return [
        line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith(name + ":")
    ]


# -- the request target ------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [b"/", b"/a%20b?x=1", b"/x%2Fy/%7Eu?q=%41&r", b"/caf%C3%A9", b"/a//b/./c?", b"/p?a=1&a=2"],
)
def test_without_a_uri_the_client_target_goes_as_received(target: bytes) -> None:
    assert template().target(FakeRequest(target)) == target


def test_after_an_internal_redirect_the_new_uri_goes_encoded() -> None:
    request = FakeRequest(b"/original?x=1", path="/new place", query="y=2", redirects=1)
    assert template().target(request) == b"/new%20place?y=2"
    request = FakeRequest(b"/original?x=1", path="/new", query="", redirects=1)
    assert template().target(request) == b"/new"


def test_after_a_redirect_to_a_named_location_the_client_target_goes_as_received() -> None:
    # the URI did not change (try_files ... @app): nginx sends what the client sent,
    # an encoded slash included
    target = b"/tf/a+b;c=d@e:f/%2Fg%20h?q=%2F+1"
    request = FakeRequest(target, path=parse_target(target)[0], redirects=1)
    assert template().target(request) == target


@pytest.mark.parametrize(
    ("uri", "prefix", "path", "query", "expected"),
    [
        ("/v2/", "/api/", "/api/users", "", b"/v2/users"),
        ("/v2/", "/api/", "/api/", "", b"/v2/"),
        ("/v2/", "/api/", "/api/users/42", "sort=name&x=%20", b"/v2/users/42?sort=name&x=%20"),
        ("/v2", "/api", "/api/x", "", b"/v2/x"),
        ("/v2", "/api", "/apix", "", b"/v2x"),
        ("/", "/api/", "/api/a b", "", b"/a%20b"),
        ("/v2/", "/api/", "/api/caf\u00e9", "", b"/v2/caf%C3%A9"),
        ("/", "/", "/x", "q", b"/x?q"),
        # nginx encodes only what would break the path: sub-delims and ":" "@" go as
        # they are (";jsessionid=", "/@scope/pkg", "/v1/x:action")
        ("/v2/", "/api/", "/api/u@h:1/a,b(c)!$&'*=+;", "", b"/v2/u@h:1/a,b(c)!$&'*=+;"),
        ("/v2/", "/api/", '/api/"<>{}|^`', "", b'/v2/"<>{}|^`'),
        ("/v2/", "/api/", "/api/a#b?c%d\x7f", "", b"/v2/a%23b%3Fc%25d%7F"),
    ],
)
def test_a_uri_replaces_the_part_the_location_matched(
    uri: str, prefix: str, path: str, query: str, expected: bytes
) -> None:
    request = FakeRequest(b"/ignored", path=path, query=query)
    assert template(uri, prefix).target(request) == expected


# -- the request head --------------------------------------------------------------------


def test_defaults_host_is_proxy_host_and_connection_close() -> None:
    lines = head_lines(template(), FakeRequest(b"/p?q=1", headers=[("Host", "client.test")]))
    assert lines[0] == "GET /p?q=1 HTTP/1.1"
    assert header_values(lines, "host") == ["app"]
    assert header_values(lines, "connection") == ["close"]


def test_with_keepalive_no_connection_header_is_sent() -> None:
    lines = head_lines(template(keepalive=True), FakeRequest(headers=[("Connection", "close")]))
    assert header_values(lines, "connection") == []
    assert header_values(lines, "host") == ["app"]


def test_proxy_set_header_overrides_the_defaults_and_the_client_whatever_the_case() -> None:
    tmpl = template(
        set_headers=[("host", "$host"), ("X-Real-IP", "$remote_addr"), ("X-Fixed", "1")]
    )
    request = FakeRequest(
        headers=[("Host", "example.test"), ("x-real-ip", "6.6.6.6"), ("X-FIXED", "client")]
    )
    lines = head_lines(tmpl, request)
    assert header_values(lines, "host") == ["example.test"]
    assert header_values(lines, "x-real-ip") == ["127.0.0.9"]
    assert header_values(lines, "x-fixed") == ["1"]


def test_x_forwarded_for_appends_the_client_address() -> None:
    tmpl = template(set_headers=[("X-Forwarded-For", "$proxy_add_x_forwarded_for")])
    assert header_values(head_lines(tmpl, FakeRequest()), "x-forwarded-for") == ["127.0.0.9"]
    request = FakeRequest(
        headers=[("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")]
    )
    assert header_values(head_lines(tmpl, request), "x-forwarded-for") == [
        "10.0.0.1, 10.0.0.2, 127.0.0.9"
    ]


def test_an_empty_value_removes_the_header() -> None:
    tmpl = template(
        set_headers=[
            ("User-Agent", ""),  # constant empty: never sent
            ("Host", ""),  # even the default Host
            ("X-Maybe", "$http_x_missing"),  # empty once rendered: not sent
            ("X-Present", "$http_x_given"),
        ]
    )
    request = FakeRequest(headers=[("Host", "h"), ("User-Agent", "ua/1"), ("X-Given", "yes")])
    lines = head_lines(tmpl, request)
    assert header_values(lines, "user-agent") == []
    assert header_values(lines, "host") == []
    assert header_values(lines, "x-maybe") == []
    assert header_values(lines, "x-present") == ["yes"]


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    request = FakeRequest(
        headers=[
            ("Host", "h"),
            ("Connection", "keep-alive, X-Hop-One"),
            ("Connection", "X-Hop-Two"),
            ("X-Hop-One", "1"),
            ("x-hop-two", "2"),
            ("Keep-Alive", "300"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Sum"),
            ("Upgrade", "h2c"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("Expect", "100-continue"),
            ("X-End-To-End", "kept"),
            ("Cookie", "a=1"),
        ]
    )
    lines = head_lines(template(keepalive=True), request)
    names = [line.split(":")[0].lower() for line in lines[1:]]
    assert names == ["host", "x-end-to-end", "cookie"]


def test_client_headers_keep_their_order_case_and_repeats() -> None:
    request = FakeRequest(
        headers=[("Host", "h"), ("X-B", "1"), ("x-a", "2"), ("X-B", "3"), ("Accept", "*/*")]
    )
    lines = head_lines(template(keepalive=True), request)
    assert lines[1:] == ["Host: app", "X-B: 1", "x-a: 2", "X-B: 3", "Accept: */*"]


@pytest.mark.parametrize(
    ("body_length", "chunked", "framing"),
    [
        (None, False, []),
        (0, False, ["Content-Length: 0"]),
        (12345, False, ["Content-Length: 12345"]),
        (None, True, ["Transfer-Encoding: chunked"]),
    ],
)
def test_the_body_framing_is_portico_s(
    body_length: int | None, chunked: bool, framing: list[str]
) -> None:
    request = FakeRequest(
        headers=[("Host", "h"), ("Content-Length", "99"), ("Transfer-Encoding", "gzip, chunked")]
    )
    lines = head_lines(template(), request, "POST", body_length, chunked)
    found = [line for line in lines if line.lower().startswith(("content-length", "transfer"))]
    assert found == framing


def test_a_method_and_target_go_in_the_request_line() -> None:
    tmpl = template("/v2/", "/api/")
    request = FakeRequest(b"/api/x?y", path="/api/x", query="y")
    assert head_lines(tmpl, request, "PROPFIND")[0] == "PROPFIND /v2/x?y HTTP/1.1"


def test_cr_and_lf_in_a_rendered_value_cannot_split_the_head() -> None:
    tmpl = template(set_headers=[("X-Uri", "$uri")])
    request = FakeRequest(b"/a%0D%0AEvil:%201", path="/a\r\nEvil: 1")
    lines = head_lines(tmpl, request)
    assert header_values(lines, "evil") == []
    assert header_values(lines, "x-uri") == ["/a  Evil: 1"]


def test_an_upgrade_asks_the_peer_to_upgrade() -> None:
    request = FakeRequest(
        headers=[("Host", "h"), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("X-K", "v")]
    )
    lines = head_lines(template(keepalive=True), request, upgrade="websocket")
    assert header_values(lines, "upgrade") == ["websocket"]
    assert header_values(lines, "connection") == ["upgrade"]
    assert header_values(lines, "x-k") == ["v"]


def test_an_upgrade_without_keepalive_sends_one_connection_header() -> None:
    request = FakeRequest(
        headers=[("Host", "h"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]
    )
    lines = head_lines(template(keepalive=False), request, upgrade="websocket")
    assert header_values(lines, "connection") == ["upgrade"]


def test_the_constant_part_is_encoded_once() -> None:
    tmpl = template(set_headers=[("X-Const", "c"), ("X-Var", "$host")])
    assert b"X-Const: c\r\n" in tmpl.constant_block
    assert b"Host: " not in tmpl.constant_block  # $proxy_host is rendered per request
    assert [name for name, _, _ in tmpl.dynamic] == ["host", "x-var"]
    assert {"host", "x-const", "x-var"} <= tmpl.overridden


def test_connection_tokens() -> None:
    assert connection_tokens(" Keep-Alive ,X-A,, x-b ") == {"keep-alive", "x-a", "x-b"}
    assert connection_tokens("") == set()


# -- the response headers ----------------------------------------------------------------

UPSTREAM_HEADERS = [
    (b"Server", b"backend/1.0"),
    (b"Date", b"Mon, 01 Jan 2001 00:00:00 GMT"),
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"7"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Connection", b"keep-alive, X-Hop"),
    (b"X-Hop", b"gone"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"Trailer", b"X-Sum"),
    (b"Upgrade", b"h2c"),
    (b"TE", b"trailers"),
    (b"X-Pad", b"pad"),
    (b"X-Accel-Redirect", b"/internal"),
    (b"X-Accel-Buffering", b"no"),
    (b"Set-Cookie", b"a=1"),
    (b"X-Secret", b"s"),
    (b"Set-Cookie", b"b=2"),
    (b"ETag", b'"v1"'),
]


def passed(hide: list[str], pass_: list[str], raw=UPSTREAM_HEADERS) -> list[str]:  # type: ignore[no-untyped-def]
    block = b"\n" + b"".join(name + b": " + value + b"\r\n" for name, value in raw)
    encoded, _ = compile_response(hide, pass_).headers(block)
    assert encoded == b"" or encoded.endswith(b"\r\n")
    return encoded.decode("latin-1").split("\r\n")[:-1]


def test_the_client_gets_end_to_end_headers_in_order_with_repeats() -> None:
    assert passed([], []) == [
        "Content-Type: text/plain",
        "Set-Cookie: a=1",
        "X-Secret: s",
        "Set-Cookie: b=2",
        'ETag: "v1"',
    ]


def test_proxy_hide_header_and_proxy_pass_header() -> None:
    lines = passed(["x-secret", "etag"], ["server", "x-accel-buffering"])
    assert lines == [
        "Server: backend/1.0",
        "Content-Type: text/plain",
        "X-Accel-Buffering: no",
        "Set-Cookie: a=1",
        "Set-Cookie: b=2",
    ]


def test_proxy_pass_header_cannot_pass_hop_by_hop_or_framing_headers() -> None:
    lines = passed([], ["connection", "keep-alive", "transfer-encoding", "content-length"])
    names = {line.split(":")[0].lower() for line in lines}
    assert names.isdisjoint(HOP_BY_HOP | {"content-length", "x-hop"})


def test_default_hidden_headers() -> None:
    assert {"date", "server", "x-pad", "x-accel-redirect", "x-accel-expires"} <= HIDDEN_BY_DEFAULT
    assert compile_response([], []).hidden == HIDDEN_BY_DEFAULT


def test_header_names_match_whatever_their_case() -> None:
    raw = [(b"CONNECTION", b"x-HOP"), (b"X-Hop", b"1"), (b"SERVER", b"s"), (b"x-kept", b"k")]
    assert passed([], [], raw) == ["x-kept: k"]


def test_headers_named_in_every_connection_line_are_dropped() -> None:
    raw = [(b"Connection", b"X-One"), (b"Connection", b"close"), (b"X-One", b"1"), (b"X-K", b"k")]
    assert passed([], [], raw) == ["X-K: k"]


def test_a_filter_answers_a_repeated_block_alike_and_stays_bounded() -> None:
    response_filter = compile_response([], ["Date"])
    blocks = [
        b"\nDate: %d\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Kept: 2\r\n" % second
        for second in range(600)
    ]
    first = [response_filter.headers(block) for block in blocks]
    again = [response_filter.headers(block) for block in blocks]  # memo hits and misses
    assert first == again
    assert first[7] == (b"Date: 7\r\nX-Kept: 2\r\n", 2)
    assert len(response_filter.memo) <= 256


def test_proxy_host_known_per_location_is_rendered_once_and_alike() -> None:
    set_headers = [("X-Up", "$proxy_host:81"), ("X-Mixed", "$proxy_host/$host")]
    compiled = [(name, compile_template(value)) for name, value in set_headers]
    per_request = compile_request(None, "/", compiled, keepalive=True)
    folded = compile_request(None, "/", compiled, keepalive=True, proxy_host="app")
    request = FakeRequest(proxy_host="app")
    assert head_lines(folded, request) == head_lines(per_request, request)
    assert b"Host: app\r\n" in folded.constant_block
    assert b"X-Up: app:81\r\n" in folded.constant_block
    # a value that needs the request stays per request
    assert [lower for lower, _, _ in folded.dynamic] == ["x-mixed"]


def test_a_big_header_block_is_filtered_but_not_remembered() -> None:
    response_filter = compile_response([], [])
    block = b"\nX-Big: " + b"b" * 4000 + b"\r\nConnection: close\r\n"
    assert response_filter.headers(block) == (b"X-Big: " + b"b" * 4000 + b"\r\n", 0)
    assert block not in response_filter.memo


def test_a_name_dropped_for_one_request_by_its_connection_header_goes_on_for_the_next() -> None:
    tmpl = template(set_headers=[("X-Owned", "ours")], keepalive=True)
    hop = FakeRequest(headers=[("Host", "h"), ("Connection", "X-Foo"), ("X-Foo", "1")])
    plain = FakeRequest(headers=[("Host", "h"), ("X-Foo", "2"), ("X-Owned", "theirs")])
    for _ in range(2):  # the second time from the template's memo of names
        assert header_values(head_lines(tmpl, hop), "x-foo") == []
        assert header_values(head_lines(tmpl, plain), "x-foo") == ["2"]
        assert header_values(head_lines(tmpl, plain), "x-owned") == ["ours"]


@pytest.mark.parametrize(
    ("target", "proxy_host"),
    [
        ("127.0.0.1:80", "127.0.0.1"),  # nginx leaves out the default port
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::1]:80", "[::1]"),
        ("[::1]:8080", "[::1]:8080"),
        ("[::1]", "[::1]"),
        ("backend.test", "backend.test"),
        ("app", "app"),  # an upstream group
        ("unix:/run/app.sock", "localhost"),
    ],
)
def test_proxy_host_is_the_target_without_the_default_port(target: str, proxy_host: str) -> None:
    assert ProxyPass(target, None).host_header == proxy_host


def redirected(rules: list[tuple[str, str]], *lines: bytes) -> list[bytes]:
    block = b"\n" + b"".join(line + b"\r\n" for line in lines)
    encoded, _ = compile_response([], [], rules).headers(block)
    return encoded.split(b"\r\n")[:-1]


@pytest.mark.parametrize(
    ("entries", "uri", "prefix", "rules"),
    [
        ((), "/two/", "/one/", [("http://app:8000/two/", "/one/")]),  # default: nginx's
        (("default",), None, "/", [("http://app:8000/", "/")]),  # no URI part
        (("off",), "/two/", "/one/", []),
        (
            (("http://a/", "/b/"), "default"),
            None,
            "/",
            [("http://a/", "/b/"), ("http://app:8000/", "/")],
        ),
    ],
)
def test_proxy_redirect_lines_become_rules(entries, uri, prefix, rules) -> None:  # type: ignore[no-untyped-def]
    assert redirect_rules(entries, "app:8000", uri, prefix) == rules


def test_location_and_refresh_are_rewritten_by_the_first_matching_rule() -> None:
    rules = [("http://app:8000/two/", "/one/"), ("http://app:8000/", "/")]
    assert redirected(
        rules,
        b"Location: http://app:8000/two/login?next=1",
        b"Refresh: 0; URL=http://app:8000/x",
        b"X-Other: http://app:8000/two/",
    ) == [b"Location: /one/login?next=1", b"Refresh: 0; URL=/x", b"X-Other: http://app:8000/two/"]
    # another host, a relative Location, a Refresh without a URL: as they are
    assert redirected(rules, b"location: http://elsewhere/two/", b"Refresh: 5") == [
        b"location: http://elsewhere/two/",
        b"Refresh: 5",
    ]
    assert redirected([], b"Location: http://app:8000/two/") == [b"Location: http://app:8000/two/"]


# -- heads made once per head as received --------------------------------------------------


def test_a_request_as_received_gets_the_head_made_for_its_head_before() -> None:
    tmpl = compile_request("/v2/", "/api/", [], keepalive=False, proxy_host="app")
    first = FakeRequest(b"/api/x?y=1", path="/api/x", query="y=1")
    made = tmpl.request_head(first, None, False, None)
    assert made == tmpl.head(first, "GET", tmpl.target(first), None, False, None)
    again = FakeRequest(b"/api/other", path="/api/other")
    again.head = first.head  # the same bytes were received (parser.py shares the head)
    assert tmpl.request_head(again, None, False, None) is made
    # a redirect changes the target: made again
    again.redirects = 1
    assert b"GET /v2/other HTTP/1.1\r\n" in tmpl.request_head(again, None, False, None)


def test_a_head_with_a_value_per_request_is_made_each_time() -> None:
    tmpl = template(set_headers=[("X-Real-IP", "$remote_addr")])
    request = FakeRequest()
    assert b"X-Real-IP: 127.0.0.9\r\n" in tmpl.request_head(request, None, False, None)
    request.conn = FakeConn()
    request.conn.remote_addr = "127.0.0.7"  # another client, the same head as received
    assert b"X-Real-IP: 127.0.0.7\r\n" in tmpl.request_head(request, None, False, None)
    assert tmpl.made == {}
    # nor a head no other request shares (one with a body, one not remembered)
    plain = compile_request(None, "/", [], keepalive=False, proxy_host="app")
    request.head.shared = False
    plain.request_head(request, 5, False, None)
    assert plain.made == {}
