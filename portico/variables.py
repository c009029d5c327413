"""``$variables`` in config strings, compiled once per config load.

A string such as ``"$scheme://$host$request_uri"`` is split at load time into literal
pieces and getter functions; at request time ``Template.render(request)`` only calls
the getters and joins. An unknown variable is a config error at load time, as in nginx.

Getters read attributes of the request object (``portico.http.request.Request``) and of
its connection; they never raise for a missing value: nginx renders an unset variable
as the empty string (and the access log shows ``-`` where its format says so).

    variable = "$" name / "${" name "}"
    name     = 1*( ALPHA / DIGIT / "_" )
"""

from __future__ import annotations

import base64
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from portico import __version__
from portico.http.response import SecondText

Getter = Callable[[Any], str]

_VARIABLE_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


class UnknownVariable(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled string with variables; ``render`` is what runs per request."""

    source: str
    parts: tuple[str | Getter, ...]

    @property
    def is_constant(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(m.group(1) or m.group(2) for m in _VARIABLE_RE.finditer(self.source))

    def render(self, request: Any) -> str:
        parts = self.parts
        if len(parts) == 1:
            part = parts[0]
            return part if isinstance(part, str) else part(request)
        return "".join(p if isinstance(p, str) else p(request) for p in parts)


def compile_template(source: str, captures: Iterable[str] = ()) -> Template:
    """Compile ``source``; ``captures`` names the regex groups the config defines."""
    parts: list[str | Getter] = []
    position = 0
    named = frozenset(captures)
    for match in _VARIABLE_RE.finditer(source):
        if match.start() > position:
            parts.append(source[position : match.start()])
        parts.append(variable_getter(match.group(1) or match.group(2), named))
        position = match.end()
    if position < len(source) or not parts:
        parts.append(source[position:])
    return Template(source, tuple(parts))


# ---------------------------------------------------------------------------------
# The variables. Each getter takes the request; ``request.conn`` is its connection.

# The getters that are one Python expression of the request ``r``, and that expression
# with the names it uses: code generated from a format (the access log's, see logs.py)
# puts the expression in its own body instead of calling the getter. Written once, as
# the expression.
EXPRESSIONS: dict[Getter, tuple[str, dict[str, Any]]] = {}


def _expression(source: str, **names: Any) -> Getter:
    getter: Getter = eval(f"lambda r: {source}", dict(names))  # our own source
    EXPRESSIONS[getter] = (source, names)
    return getter


def _header(name: str) -> Getter:
    key = name.replace("_", "-").lower()
    return _expression(f"r.headers.get({key!r}, '')")


def _sent_header(name: str) -> Getter:
    # the first line of that name in the head as sent (r.sent_head: b"" before the
    # answer's head went out), its value without the surrounding whitespace
    line = re.compile(
        rb"\r\n" + re.escape(name.replace("_", "-").encode("latin-1")) + rb":[ \t]*([^\r]*)",
        re.IGNORECASE,
    )

    def get(r: Any) -> str:
        match = line.search(r.sent_head)
        return match[1].rstrip(b" \t").decode("latin-1") if match is not None else ""

    return get


def _argument(name: str) -> Getter:
    def get(r: Any) -> str:
        for pair in r.query.split("&"):
            key, _, value = pair.partition("=")
            if key == name:
                return value
        return ""

    return get


def _cookie(name: str) -> Getter:
    def get(r: Any) -> str:
        for pair in r.headers.get("cookie", "").split(";"):
            key, _, value = pair.strip().partition("=")
            if key == name:
                return value
        return ""

    return get


def _capture(index: int | str) -> Getter:
    def get(r: Any) -> str:
        # a named group of server_name stays available after a location regex matched
        for match in (r.captures, r.server_captures):
            if match is not None:
                try:
                    return match.group(index) or ""
                except IndexError:
                    continue
        return ""

    return get


def _host(r: Any) -> str:
    host = r.host
    return host if host else r.server_name


def _clock_text(text: Callable[[time.struct_time], str]) -> Getter:
    """A getter of the time now (nginx: the time of the log write, not of the request's
    start), formatted by ``text`` once per second: a log asks on every request."""
    clock = SecondText(lambda second: text(time.localtime(second)), "")

    def get(r: Any) -> str:
        return clock.update(time.time())

    # in a log line: the text of this second without a call (a name of its own: a
    # line may hold several clocks)
    name = f"clock_{id(clock)}"
    EXPRESSIONS[get] = (
        f"{name}.text if {name}.second <= time.time() < {name}.until else get_{name}(r)",
        {name: clock, f"get_{name}": get, "time": time},
    )
    return get


def _iso8601(moment: time.struct_time) -> str:
    offset = time.strftime("%z", moment)  # "+0100"; nginx writes "+01:00"
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + offset[:3] + ":" + offset[3:]


def _remote_user(r: Any) -> str:
    """The user name of ``Authorization: Basic`` credentials, as nginx decodes them
    whether or not auth_basic is on: empty unless they are base64 of "user:password"
    with a non-empty user."""
    scheme, _, credentials = r.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        text = base64.b64decode(credentials.strip(), validate=True).decode("latin-1")
    except ValueError:  # binascii.Error is one
        return ""
    user, colon, _ = text.partition(":")
    return user if colon else ""


def _binary_remote_addr(r: Any) -> str:
    # A str holding the packed address bytes, so it can key zones like nginx's.
    conn = r.conn
    try:
        family = socket.AF_INET6 if ":" in conn.remote_addr else socket.AF_INET
        return socket.inet_pton(family, conn.remote_addr).decode("latin-1")
    except OSError:
        return conn.remote_addr


def _request_length(r: Any) -> int:
    """Bytes of the request as received: its line, headers and body (the head is
    counted from what was parsed: the exact line ends are not kept)."""
    head = getattr(r, "head", None)
    if head is None:
        return 0
    size = len(head.method) + len(head.target) + 14  # "M T HTTP/1.1\r\n" and "\r\n"
    size += sum(len(name) + len(value) + 4 for name, value in head.raw_headers)
    return size + r.body.received


def _per_exchange(text: Callable[[Any], str]) -> Getter:
    """An $upstream_* getter: ``text`` of the request's proxy exchange, after those of
    the exchanges before its internal redirects, joined with " : " (nginx)."""

    def get(r: Any) -> str:
        exchange = r.upstream
        if exchange is None:
            return ""
        if exchange.earlier is None:
            return text(exchange)
        parts = []
        while exchange is not None:
            parts.append(text(exchange))
            exchange = exchange.earlier
        return " : ".join(reversed(parts))

    return get


def _proxy_add_x_forwarded_for(r: Any) -> str:
    previous = r.headers.get("x-forwarded-for")
    return f"{previous}, {r.conn.remote_addr}" if previous else r.conn.remote_addr


_HOSTNAME = socket.gethostname()

# name → getter (docs/configuration.md lists them from this table)
VARIABLES: dict[str, Getter] = {
    "args": _expression("r.query"),
    "query_string": _expression("r.query"),
    "is_args": _expression("'?' if r.query else ''"),
    "binary_remote_addr": _binary_remote_addr,
    "body_bytes_sent": _expression("str(r.body_bytes_sent)"),
    "bytes_sent": _expression("str(r.bytes_sent)"),
    "connection": _expression("str(r.conn.number)"),
    "connection_requests": _expression("str(r.conn.requests)"),
    "content_length": _header("content_length"),
    "content_type": _header("content_type"),
    "document_root": _expression("r.location.files.folder(r) if r.location else ''"),
    "host": _host,
    "hostname": lambda r: _HOSTNAME,
    "msec": lambda r: f"{time.time():.3f}",
    "pid": lambda r: str(os.getpid()),
    "portico_version": lambda r: __version__,
    "proxy_add_x_forwarded_for": _proxy_add_x_forwarded_for,
    "proxy_host": _expression("r.proxy_host"),
    "remote_addr": _expression("r.conn.remote_addr"),
    "remote_port": _expression("str(r.conn.remote_port)"),
    # most requests carry no credentials: no call for them
    "remote_user": _expression(
        "_remote_user(r) if 'authorization' in r.headers else ''", _remote_user=_remote_user
    ),
    # a request that could not be parsed has no method, and no request line (the
    # property Request.line, written out: a log line asks on every request)
    "request": _expression(
        "(r.head.line if r.method == r.head.method else r.line) if r.method else ''"
    ),
    "request_filename": _expression("r.location.files.filename(r, r.path) if r.location else ''"),
    "request_length": lambda r: str(_request_length(r)),
    "request_method": _expression("r.method"),
    "request_time": lambda r: f"{r.elapsed():.3f}",
    "request_uri": _expression("r.target.decode('latin-1')"),
    "scheme": _expression("'http'"),
    "server_addr": _expression("r.conn.server_addr"),
    "server_name": lambda r: r.server_name,
    "server_port": _expression("r.conn.server_port"),
    "server_protocol": _expression("f'HTTP/{r.version}'"),
    "status": _expression("str(r.status)"),
    "time_iso8601": _clock_text(_iso8601),
    "time_local": _clock_text(lambda moment: time.strftime("%d/%b/%Y:%H:%M:%S %z", moment)),
    "uri": _expression("r.path"),
    "document_uri": _expression("r.path"),
    "upstream_addr": _per_exchange(lambda e: ", ".join(e.addrs)),
    "upstream_status": _per_exchange(lambda e: ", ".join(map(str, e.statuses))),
    "upstream_response_time": _per_exchange(lambda e: ", ".join(f"{t:.3f}" for t in e.times)),
}

# Values that never need escaping in a log line and are never empty: digits, dates,
# addresses. The access log writes them as they are (see logs.compile_log_format).
PLAIN_VARIABLES = frozenset(
    VARIABLES[name]
    for name in (
        "body_bytes_sent",
        "bytes_sent",
        "connection",
        "connection_requests",
        "msec",
        "remote_addr",
        "request_length",
        "request_time",
        "status",
        "time_iso8601",
        "time_local",
    )
)
# Values that are the same for every request of the process.
CONSTANT_VARIABLES = frozenset({VARIABLES["scheme"]})

# Families: "$http_user_agent" reads the User-Agent header, and so on.
PREFIXES: dict[str, Callable[[str], Getter]] = {
    "http_": _header,
    "sent_http_": _sent_header,
    "arg_": _argument,
    "cookie_": _cookie,
}


def variable_getter(name: str, captures: frozenset[str] = frozenset()) -> Getter:
    """The getter for ``$name``; raises UnknownVariable for a name nginx would reject."""
    if name.isdigit():
        return _capture(int(name))
    if name in captures:
        return _capture(name)
    getter = VARIABLES.get(name)
    if getter is not None:
        return getter
    for prefix, family in PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return family(name[len(prefix) :])
    raise UnknownVariable(f'unknown "{name}" variable')
