"""Access log escaping (escape=default): printable ASCII as is, everything else \\xHH."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from portico.config.directives import LogFormat
from portico.http.parser import RequestReader
from portico.http.request import Request
from portico.logs import compile_log_format, escape_default, escape_json
from portico.variables import compile_template


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("", "-"),
        ("/plain?a=1&b=~", "/plain?a=1&b=~"),
        ('say "hi"\\', "say \\x22hi\\x22\\x5C"),
        ("line\nbreak\x7f", "line\\x0Abreak\\x7F"),
        ("caf\u00e9", "caf\\xE9"),  # latin-1: its byte
        ("\u20ac", "\\xE2\\x82\\xAC"),  # beyond: its UTF-8 bytes, never raw
        ("/\udcff", "/\\xFF"),  # a byte that was not UTF-8, kept by surrogateescape
    ],
)
def test_escape_default(value: str, written: str) -> None:
    assert escape_default(value) == written


# Variables the log writes without escaping (but the clock readings, which would differ
# between two renderings), one it folds into the text, and some it must escape, for a
# request whose client-sent values need it.
_EVERY_KIND = (
    '$remote_addr - $remote_user "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" $bytes_sent $connection $connection_requests '
    "$request_length $scheme 100%"
)


def _request() -> Request:
    reader = RequestReader()
    reader.feed(b'GET /a?b=%22 HTTP/1.1\r\nHost: x\r\nUser-Agent: curl "x"\tz\\\r\n\r\n')
    conn = SimpleNamespace(remote_addr="127.0.0.1", number=7, requests=3)
    request = Request(conn, reader.events[0], time.time())  # type: ignore[arg-type]
    request.status, request.body_bytes_sent, request.bytes_sent = 200, 19, 170
    return request


@pytest.mark.parametrize("escape", ["default", "json", "none"])
def test_a_compiled_format_escapes_what_needs_it_and_only_that(escape: str) -> None:
    template = compile_template(_EVERY_KIND)
    render = compile_log_format(LogFormat("every", template, escape))
    request = _request()
    escaper = {"default": escape_default, "json": escape_json, "none": lambda v: v}[escape]
    # the plain rule: every variable escaped, one after the other
    expected = "".join(
        part if isinstance(part, str) else escaper(part(request)) for part in template.parts
    )
    assert render(request) == expected + "\n"
    if escape == "default":
        assert '"GET /a?b=%22 HTTP/1.1" 200 19 "-" "curl \\x22x\\x22\\x09z\\x5C"' in (
            render(request)
        )
        assert ' - - "' in render(request)  # the empty $remote_user
        assert render(request).endswith(" http 100%\n")


def test_the_literal_text_of_a_format_is_written_as_it_is() -> None:
    text = "{$status} 'q' \"d\" \\b\\ 100% {{x}}\t\u00e9 $request_method"
    render = compile_log_format(LogFormat("odd", compile_template(text), "default"))
    expected = "{200} 'q' \"d\" \\b\\ 100% {{x}}\t\u00e9 GET\n"
    assert render(_request()) == expected


def test_two_clocks_in_one_line_each_write_their_own_text() -> None:
    render = compile_log_format(
        LogFormat("clocks", compile_template("$time_local|$time_iso8601|$time_local"), "default")
    )
    local, iso, again = render(_request()).rstrip("\n").split("|")
    assert "/" in local and "T" in iso and again == local


def test_the_log_clock_follows_a_clock_set_back(monkeypatch: pytest.MonkeyPatch) -> None:
    render = compile_log_format(LogFormat("clock", compile_template("$time_iso8601"), "default"))
    now = 1_800_000_000.5
    monkeypatch.setattr(time, "time", lambda: now)
    later = render(_request())
    now -= 3600  # an NTP step, a VM resumed: the next line says the new time
    earlier = render(_request())
    assert later != earlier
    assert earlier.startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)))
