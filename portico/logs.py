"""The error log and the access logs, in nginx's formats.

Error log lines look like nginx's::

    2026/11/25 05:02:01 [error] 1234#0: *5 open() "/srv/x" failed (2: No such file
    or directory), client: 127.0.0.1, server: example.com, request: "GET /x HTTP/1.1"

(one line in the file).

Access log lines are rendered from a compiled ``log_format``: each variable's value is
escaped as nginx's ``escape=default`` does (``"`` and ``\\`` and bytes outside printable
ASCII become ``\\xHH``), and an empty value is written ``-``. Values are text: a
character up to U+00FF is written as its latin-1 byte (header values arrive as latin-1),
one beyond as its UTF-8 bytes (so a raw byte that was not UTF-8 comes out as itself). A
decoded path's "é" is thus ``\\xE9``, where nginx, which logs bytes, writes ``\\xC3\\xA9``.

Lines are buffered per file and written when the buffer fills or on the periodic flush,
so logging costs no system call per request. Files are opened in append mode, so
several workers can share one file and ``reopen`` (USR1, after logrotate moved the file)
starts a new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from portico.config.directives import LOG_LEVELS, LogFormat
from portico.memo import remember
from portico.variables import CONSTANT_VARIABLES, EXPRESSIONS, PLAIN_VARIABLES

_LEVEL_RANK = {name: rank for rank, name in enumerate(LOG_LEVELS)}

_ESCAPE_TABLE = {c: f"\\x{c:02X}" for c in range(256) if c < 0x20 or c >= 0x7F}
_ESCAPE_TABLE[ord('"')] = "\\x22"
_ESCAPE_TABLE[ord("\\")] = "\\x5C"
# one C-level scan finds whether a value needs escaping at all (most do not): anything
# but printable ASCII, and " and \
_NEEDS_ESCAPE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _escape_char(c: str) -> str:
    if ord(c) < 256:
        return _ESCAPE_TABLE.get(ord(c), c)
    # beyond latin-1: a character of a UTF-8 path, or a byte that was not UTF-8
    # (surrogateescape): its bytes, as nginx writes them
    return "".join(f"\\x{b:02X}" for b in c.encode("utf-8", "surrogateescape"))


# values escaped before → as written: a log sees the same few request lines, user
# agents and referers again and again (the compiled line looks here first)
_ESCAPED: dict[str, str] = {}
_ESCAPED_MAX = 1024
_ESCAPED_VALUE_MAX = 512


def escape_default(value: str) -> str:
    if not value:
        escaped = "-"
    elif _NEEDS_ESCAPE.search(value) is None:
        escaped = value
    else:
        escaped = "".join(map(_escape_char, value))
    if len(value) <= _ESCAPED_VALUE_MAX:
        remember(_ESCAPED, value, escaped, _ESCAPED_MAX)
    return escaped


def escape_json(value: str) -> str:
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def compile_log_format(log_format: LogFormat) -> Callable[[Any], str]:
    """The function that renders one line, newline included, for a request.

    It is generated once per format: each variable is its getter's expression
    (variables.EXPRESSIONS) or a call of its getter, wrapped in the escape only where
    the value could need it (PLAIN_VARIABLES never do; CONSTANT_VARIABLES are rendered
    here, once), and the line is one f-string of the literal text and those values
    (an f-string joins in one step; a %-format parses its format on every call). The
    default escape looks for the value among those it escaped before first.
    """
    escape: Callable[[str], str] = {
        "default": escape_default,
        "json": escape_json,
        "none": lambda v: v,
    }[log_format.escape]
    line = []  # the f-string's body
    body = []  # the statements that make the values
    namespace: dict[str, Any] = {"escape": escape, "escaped": _ESCAPED}
    for part in log_format.template.parts:
        if isinstance(part, str):
            line.append(_fstring_text(part))
            continue
        if part in CONSTANT_VARIABLES:
            line.append(_fstring_text(escape(part(None))))
            continue
        name = f"v{len(body)}"
        line.append("{" + name + "}")
        expression = EXPRESSIONS.get(part)
        if expression is not None:
            value, names = expression
            namespace.update(names)
        else:  # a getter of more than one expression: called
            namespace["get" + name] = part
            value = f"get{name}(r)"
        if part in PLAIN_VARIABLES:
            body.append(f"{name} = {value}")
        elif escape is escape_default:
            # a value escaped before is one dict lookup (an empty one is "-", kept)
            body.append(f"{name} = {value}\n    {name} = escaped.get({name}) or escape({name})")
        else:
            body.append(f"{name} = escape({value})")
    source = "def render(r):\n" + "".join(f"    {statement}\n" for statement in body)
    source += f"    return f'{''.join(line)}\\n'\n"
    exec(source, namespace)  # our own source, built from the format's parts
    render: Callable[[Any], str] = namespace["render"]
    return render


def _fstring_text(text: str) -> str:
    """``text`` as it is written inside f'...': braces doubled, quotes, backslashes
    and anything unprintable escaped."""
    out = []
    for char in text:
        if char in "{}":
            out.append(char * 2)
        elif char in "'\\":
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def _open_append(path: str) -> int:
    if path == "stderr":
        return 2
    if path in ("stdout", "/dev/stdout"):
        return 1
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class LogFile:
    """One open log file with a write buffer (bytes are written whole lines at a time):
    written when ``buffer_size`` is reached, or once lines have waited ``flush_after``
    seconds (see flush_if_due)."""

    __slots__ = ("_buffer", "_buffered", "_flushed_at", "buffer_size", "fd", "flush_after", "path")

    def __init__(self, path: str, buffer_size: int, flush_after: float = 1.0) -> None:
        self.path = path
        self.fd = _open_append(path)
        self.buffer_size = buffer_size
        self.flush_after = flush_after
        self._buffer: list[str] = []
        self._buffered = 0
        self._flushed_at = 0.0

    def flush_if_due(self, now: float) -> None:
        """The periodic flush: write what waited ``flush_after`` seconds or more."""
        if now - self._flushed_at >= self.flush_after:
            self._flushed_at = now
            self.flush()

    def write(self, line: str) -> None:
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= self.buffer_size:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        data = "".join(self._buffer).encode("utf-8", "surrogateescape")
        self._buffer.clear()
        self._buffered = 0
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError as e:
            sys.stderr.write(f"portico: cannot write log {self.path}: {e}\n")

    def reopen(self) -> None:
        self.flush()
        if self.fd > 2:
            new = _open_append(self.path)
            os.dup2(new, self.fd)
            os.close(new)

    def close(self) -> None:
        self.flush()
        if self.fd > 2:
            os.close(self.fd)
            self.fd = -1


class AccessLog:
    """One ``access_log`` line of the config, ready to write."""

    __slots__ = ("file", "render")

    def __init__(self, file: LogFile, render: Callable[[Any], str]) -> None:
        self.file = file
        self.render = render

    def write(self, request: Any) -> None:
        self.file.write(self.render(request))


class ErrorLog:
    """nginx-style error log, written at once (errors are rare and must not be lost)."""

    __slots__ = ("fd", "ident", "level", "path", "rank")

    def __init__(self, path: str, level: str, ident: str = "") -> None:
        self.path = path
        self.level = level
        self.rank = _LEVEL_RANK[level]
        self.fd = _open_append(path)
        self.ident = ident or f"{os.getpid()}#0"

    def enabled(self, level: str) -> bool:
        return _LEVEL_RANK[level] >= self.rank

    def log(self, level: str, message: str, connection: int | None = None) -> None:
        if _LEVEL_RANK[level] < self.rank:
            return
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        conn = f"*{connection} " if connection else ""
        line = f"{stamp} [{level}] {self.ident}: {conn}{message}\n"
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))

    def reopen(self) -> None:
        if self.fd > 2:
            new = _open_append(self.path)
            os.dup2(new, self.fd)
            os.close(new)

    def close(self) -> None:
        if self.fd > 2:
            os.close(self.fd)
            self.fd = -1


def context(request: Any, upstream: str | None = None) -> str:
    """nginx's suffix of an error line about a request, in nginx's order (the URL of
    the ``upstream`` it was sent to, if any, between the request and the host)."""
    server = request.server_name if request.server is not None else ""
    return (
        f", client: {request.conn.remote_addr}, server: {server}, request: "
        f'"{request.line}"'
        + (f', upstream: "{upstream}"' if upstream is not None else "")
        + (f', host: "{request.headers["host"]}"' if "host" in request.headers else "")
    )
