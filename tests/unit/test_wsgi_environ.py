"""The PEP 3333 environ builder and the app spec parser, without a server.

Requests are real: raw bytes through the real parser (``RequestReader``) and the real
``Request`` (path decoding); only the connection's addresses are given by hand. Every
environ built here also passes ``wsgiref.validate.check_environ``.
"""

from __future__ import annotations

import ast
import io
import itertools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from wsgiref.validate import check_environ

import pytest

from portico.http.parser import RequestHead, RequestReader
from portico.http.request import Request
from portico.logs import ErrorLog
from portico.wsgi import environ as environ_module
from portico.wsgi.app import AppLoadError, load_app, parse_spec
from portico.wsgi.environ import (
    base_environ,
    build_environ,
    header_key,
    to_wsgi_str,
)
from portico.wsgi.errors import wsgi_errors_stream
from portico.wsgi.input import EMPTY


@dataclass
class Addresses:
    """What build_environ reads from a connection."""

    remote_addr: str = "192.0.2.7"
    remote_port: int = 50123
    server_addr: str = "127.0.0.1"
    server_port: str = "8080"


def parse(raw: bytes) -> RequestHead:
    reader = RequestReader()
    reader.feed(raw)
    head = reader.events[0]
    assert isinstance(head, RequestHead)
    return head


def environ_of(
    raw: bytes,
    script_name: str = "",
    server_name: str = "",
    multithread: bool = True,
    extra: dict[str, str] | None = None,
    wsgi_input: Any = EMPTY,
) -> dict[str, Any]:
    request = Request(Addresses(), parse(raw), 0.0)  # type: ignore[arg-type]
    request.server = SimpleNamespace(name=server_name)
    base = base_environ(io.StringIO(), multithread, extra or {})
    environ = build_environ(base, request, to_wsgi_str(script_name), wsgi_input)
    check_environ(environ)  # PEP 3333, as wsgiref reads it
    return environ


def get(target: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}", "Host: example.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- the request line --------------------------------------------------------------------


def test_a_plain_get() -> None:
    environ = environ_of(get("/a/b?x=1&y=2", "User-Agent: test/1.0"))
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/a/b"
    assert environ["QUERY_STRING"] == "x=1&y=2"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["SERVER_NAME"] == "127.0.0.1"  # the server has no name: its address
    assert environ["SERVER_PORT"] == "8080"
    assert environ["REMOTE_ADDR"] == "192.0.2.7"
    assert environ["REMOTE_PORT"] == "50123"
    assert environ["HTTP_HOST"] == "example.test"
    assert environ["HTTP_USER_AGENT"] == "test/1.0"
    assert "CONTENT_LENGTH" not in environ and "CONTENT_TYPE" not in environ
    assert environ["wsgi.input"] is EMPTY


def test_server_name_is_the_server_blocks_name() -> None:
    assert environ_of(get("/"), server_name="app.test")["SERVER_NAME"] == "app.test"


@pytest.mark.parametrize(("version", "protocol"), [("1.0", "HTTP/1.0"), ("1.1", "HTTP/1.1")])
def test_server_protocol(version: str, protocol: str) -> None:
    assert environ_of(get("/", version=version))["SERVER_PROTOCOL"] == protocol


def test_no_query_is_an_empty_query_string() -> None:
    assert environ_of(get("/x"))["QUERY_STRING"] == ""
    assert environ_of(get("/x?"))["QUERY_STRING"] == ""


@pytest.mark.parametrize(
    ("target", "path_bytes", "query"),
    [
        ("/caf%C3%A9", "/café".encode(), ""),
        ("/a%2Fb", b"/a/b", ""),  # decoded: %2F is a slash like any other
        ("/100%25", b"/100%", ""),
        ("/sp%20ace", b"/sp ace", ""),
        ("/a/./b/../c", b"/a/c", ""),
        ("/x?q=caf%C3%A9&s=a%2Fb&t=%25", b"/x", "q=caf%C3%A9&s=a%2Fb&t=%25"),  # raw
        ("/x?a=1&a=2&b", b"/x", "a=1&a=2&b"),
        ("/bad%FFutf8", b"/bad\xffutf8", ""),  # not UTF-8: the bytes all the same
    ],
)
def test_path_is_decoded_latin1_and_query_is_raw(
    target: str, path_bytes: bytes, query: str
) -> None:
    environ = environ_of(get(target))
    # PEP 3333: "bytes in a str", one latin-1 character per byte of the decoded path
    assert environ["PATH_INFO"] == path_bytes.decode("latin-1")
    assert environ["PATH_INFO"].encode("latin-1") == path_bytes
    assert environ["QUERY_STRING"] == query


def test_to_wsgi_str() -> None:
    assert to_wsgi_str("/plain") == "/plain"
    assert to_wsgi_str("/café") == "/cafÃ©"
    assert to_wsgi_str("/\udcff") == "/\xff"  # surrogate escapes are the original bytes


# -- SCRIPT_NAME ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script_name", "target", "expected"),
    [
        ("/app", "/app/x/y?q=1", ("/app", "/x/y")),
        ("/app", "/app/", ("/app", "/")),
        ("/app", "/app", ("/app", "")),
        ("/app", "/apple", ("", "/apple")),  # a prefix of the name is not the mount point
        ("/app", "/other/x", ("", "/other/x")),
        ("/app", "/%61pp/x", ("/app", "/x")),  # compared with the decoded path
        ("/a/b", "/a/b/c", ("/a/b", "/c")),
        ("", "/app/x", ("", "/app/x")),
    ],
)
def test_script_name(script_name: str, target: str, expected: tuple[str, str]) -> None:
    environ = environ_of(get(target), script_name=script_name)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == expected


def test_script_name_with_non_ascii_characters() -> None:
    environ = environ_of(get("/caf%C3%A9/x"), script_name="/café")
    assert environ["SCRIPT_NAME"] == "/café".encode().decode("latin-1")
    assert environ["PATH_INFO"] == "/x"


# -- headers ---------------------------------------------------------------------------


def test_repeated_headers_are_joined() -> None:
    environ = environ_of(
        get(
            "/",
            "Accept: text/html",
            "X-Multi: a",
            "Cookie: one=1",
            "Accept: application/json",
            "X-Multi: b, c",
            "Cookie: two=2",
        )
    )
    assert environ["HTTP_ACCEPT"] == "text/html, application/json"
    assert environ["HTTP_X_MULTI"] == "a, b, c"
    assert environ["HTTP_COOKIE"] == "one=1; two=2"


@pytest.mark.parametrize(
    "headers",
    [
        ("X_Forwarded_For: 6.6.6.6", "X-Forwarded-For: 10.0.0.1"),
        ("X-Forwarded-For: 10.0.0.1", "X_Forwarded_For: 6.6.6.6"),
        ("X-Forwarded-For: 10.0.0.1", "x_forwarded_for: 6.6.6.6"),
    ],
)
def test_header_with_underscores_cannot_impersonate_one_with_dashes(
    headers: tuple[str, str],
) -> None:
    environ = environ_of(get("/", *headers))
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"


def test_header_with_underscores_alone_is_dropped() -> None:
    environ = environ_of(get("/", "X_Real_IP: 6.6.6.6", "Content_Type: text/evil"))
    assert not any("6.6.6.6" in str(value) for value in environ.values())
    assert "HTTP_X_REAL_IP" not in environ
    assert "CONTENT_TYPE" not in environ


def test_header_keys() -> None:
    assert header_key("user-agent") == "HTTP_USER_AGENT"
    assert header_key("x-a-b") == "HTTP_X_A_B"
    assert header_key("content-type") == "CONTENT_TYPE"
    assert header_key("content-length") == "CONTENT_LENGTH"
    assert header_key("x_a") is None
    assert header_key("x_a") is None  # (memoised: the same answer the second time)


def test_content_type_and_length_have_no_http_prefix() -> None:
    raw = (
        b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: 7\r\n\r\na=1&b=2"
    )
    environ = environ_of(raw, wsgi_input=io.BytesIO(b"a=1&b=2"))
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ


def test_chunked_body_has_no_content_length() -> None:
    raw = (
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: text/plain\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    environ = environ_of(raw, wsgi_input=io.BytesIO(b"hello"))
    assert "CONTENT_LENGTH" not in environ
    assert environ["CONTENT_TYPE"] == "text/plain"


# -- the wsgi.* keys and wsgi_env ------------------------------------------------------------


@pytest.mark.parametrize("multithread", [True, False])
def test_wsgi_keys(multithread: bool) -> None:
    environ = environ_of(get("/"), multithread=multithread)
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is multithread
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["SERVER_SOFTWARE"].startswith("portico/")


def test_wsgi_env_values_appear_and_requests_do_not_share_an_environ() -> None:
    base = base_environ(io.StringIO(), True, {"APP_MODE": "test", "DATA_DIR": "/srv"})
    template = dict(base)
    first = build_environ(base, _request(get("/one?a")), "", EMPTY)
    second = build_environ(base, _request(get("/two", "X-Only: second")), "", EMPTY)
    assert first["APP_MODE"] == second["APP_MODE"] == "test"
    assert first["DATA_DIR"] == "/srv"
    assert (first["PATH_INFO"], second["PATH_INFO"]) == ("/one", "/two")
    assert "HTTP_X_ONLY" not in first
    first["wsgi.app_owned"] = True
    assert base == template  # the template is copied, never written
    assert "wsgi.app_owned" not in second


def _request(raw: bytes) -> Request:
    request = Request(Addresses(), parse(raw), 0.0)  # type: ignore[arg-type]
    request.server = SimpleNamespace(name="")
    return request


def test_wsgi_errors_goes_to_the_error_log_line_by_line(tmp_path: Path) -> None:
    log = ErrorLog(str(tmp_path / "error.log"), "info")
    errors = wsgi_errors_stream(log)
    errors.write("first line\nsecond ")
    errors.writelines(["line\n", "third"])
    text = (tmp_path / "error.log").read_text()
    assert "[error]" in text
    assert [line.split(": ", 1)[1] for line in text.splitlines()] == [
        "first line",
        "second line",
    ]
    errors.flush()
    log.close()
    assert (tmp_path / "error.log").read_text().splitlines()[-1].endswith(": third")


def test_the_environ_builder_is_a_pure_core() -> None:
    # STYLE.md: no I/O, clock or randomness in the environ builder
    tree = ast.parse(Path(environ_module.__file__).read_text())
    forbidden = {"asyncio", "socket", "time", "random", "os", "selectors", "threading"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            continue
        assert not names & forbidden, ast.unparse(node)


# -- app specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("hello", ("hello", None, False)),
        ("pkg.mod", ("pkg.mod", None, False)),
        ("pkg.mod:app", ("pkg.mod", "app", False)),
        ("pkg.mod:create_app()", ("pkg.mod", "create_app", True)),
        ("mod:obj.attr", ("mod", "obj.attr", False)),
        ("mod:obj.make()", ("mod", "obj.make", True)),
        ("_private:_app", ("_private", "_app", False)),
    ],
)
def test_parse_spec(spec: str, parsed: tuple[str, str | None, bool]) -> None:
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec",
    [
        "",
        ":app",
        "my-mod:app",
        "mod.:app",
        ".mod:app",
        "mod:1app",
        "mod:app(",
        "mod:app(1)",
        "mod:app()()",
        "mod:a b",
        "mod::app",
        "mod:app.",
        "mod/sub:app",
    ],
)
def test_parse_spec_rejects(spec: str) -> None:
    with pytest.raises(AppLoadError, match=re.escape("expected MODULE:NAME or MODULE:FACTORY()")):
        parse_spec(spec)


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """load_app changes sys.path and sys.modules: give both back afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("wsgi_spec_", "tests.apps")):
            del sys.modules[name]


@pytest.mark.usefixtures("isolated_imports")
def test_load_app_finds_apps_and_calls_factories() -> None:
    from flask import Flask

    from tests.apps import hello

    assert load_app("tests.apps.hello") is sys.modules["tests.apps.hello"].app  # "app"
    assert load_app("tests.apps.hello:plain") is sys.modules["tests.apps.hello"].plain
    made = load_app("tests.apps.hello:create_app()")
    assert isinstance(made, Flask) and made is not hello.app
    assert made.name == "factory"


@pytest.mark.usefixtures("isolated_imports")
def test_load_app_prefers_application_to_app(tmp_path: Path) -> None:
    (tmp_path / "wsgi_spec_both.py").write_text(
        "def application(e, s):\n    return []\n\n\ndef app(e, s):\n    return []\n"
    )
    loaded = load_app("wsgi_spec_both", [str(tmp_path)])
    assert loaded.__name__ == "application"


_NUMBERS = itertools.count()


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        ("", "wsgi_spec_nothing_here_x", 'cannot import "wsgi_spec_nothing_here_x"'),
        ("x = 1\n", "{module}:app", 'has no "app"'),
        ("x = 1\n", "{module}", 'has no "application or app"'),
        ("x = 1\n", "{module}:x", "is not callable"),
        (
            "import os\n\nraise RuntimeError('no database')\n",
            "{module}:app",
            r"RuntimeError: no database \(.*{module}\.py:3\)",
        ),
        ("def app(:\n", "{module}:app", r"SyntaxError: .*{module}\.py:1\)"),
        (
            "def make():\n    return {}['missing']\n",
            "{module}:make()",
            r"calling \"{module}:make\(\)\" failed: KeyError: 'missing' \(.*{module}\.py:2\)",
        ),
    ],
)
def test_load_app_errors_say_what_and_where(
    tmp_path: Path, source: str, spec: str, message: str
) -> None:
    module = f"wsgi_spec_{next(_NUMBERS)}"  # a new name each time: nothing cached
    if source:
        (tmp_path / f"{module}.py").write_text(source)
    with pytest.raises(AppLoadError, match=message.format(module=module)):
        load_app(spec.format(module=module), [str(tmp_path)])
