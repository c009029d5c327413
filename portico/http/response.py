"""Response heads and portico's own pages: status lines, the Date clock, error bodies.

Everything here is computed once where it can be: status lines are a table of bytes,
the ``Date`` header is rebuilt at most once per second, error pages are rendered once
per (status, server_tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Generic, TypeVar

from portico import __version__

SERVER_FULL = f"portico/{__version__}"
SERVER_SHORT = "portico"

T = TypeVar("T")

# nginx's wording where it has one (e.g. 408 "Request Time-out" is nginx's old form;
# we keep RFC 9110's reason phrases).
_EXTRA_REASONS = {
    425: "Too Early",
    444: "No Response",
    499: "Client Closed Request",
}


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {reason(status)}\r\n".encode("latin-1")
        STATUS_LINES[status] = line
    return line


class SecondText(Generic[T]):
    """A text of the current second (the ``Date`` header, a log's ``$time_local``),
    made at most once per second by ``make`` (given the second).

    ``now`` is wall-clock seconds from the caller's clock (``time.time()``), so tests
    can drive it. ``text`` holds while ``second <= now < until``: callers on a hot path
    compare those floats themselves (cheaper than a call, or int(now)); both bounds,
    so that a clock set back is followed at once.
    """

    __slots__ = ("make", "second", "text", "until")

    def __init__(self, make: Callable[[int], T], empty: T) -> None:
        self.make = make
        self.second = -1
        self.until = -1.0
        self.text = empty

    def update(self, now: float) -> T:
        second = int(now)
        if second != self.second:
            self.second = second
            self.until = second + 1.0
            self.text = self.make(second)
        return self.text


def date_header(second: int) -> bytes:
    """The ``Date`` header line for a second."""
    return b"Date: " + formatdate(second, usegmt=True).encode("ascii") + b"\r\n"


# Statuses that carry no body, whatever the method (RFC 9110 §6.4.1).
BODILESS_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))

_PAGES: dict[tuple[int, bool], bytes] = {}


def error_page(status: int, server_tokens: bool) -> bytes:
    """nginx's small HTML page for an error status."""
    key = (status, server_tokens)
    page = _PAGES.get(key)
    if page is None:
        title = f"{status} {reason(status)}"
        signature = SERVER_FULL if server_tokens else SERVER_SHORT
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n"
            f"<hr><center>{signature}</center>\r\n</body>\r\n</html>\r\n"
        ).encode("ascii")
        _PAGES[key] = page
    return page


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """``Name: value\\r\\n`` lines; values are latin-1 as HTTP/1.1 allows.

    A CR or LF inside a value (say a decoded ``$uri`` in a Location) would split the
    response: they are percent-encoded, which is what a URL wants anyway.
    """
    out = []
    for name, value in headers:
        if "\r" in value or "\n" in value:
            value = value.replace("\r", "%0D").replace("\n", "%0A")
        out.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    return b"".join(out)
