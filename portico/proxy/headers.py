"""What the proxy sends upstream and what it passes back: pure header rewriting.

Towards the upstream (nginx's rules):

- the request line carries the client's URI as received, or, when ``proxy_pass`` has a
  URI, that URI in place of the part the location matched (``location /api/`` with
  ``proxy_pass http://app/v2/`` sends ``/api/users`` as ``/v2/users``);
- ``proxy_set_header`` lines come first (defaults ``Host: $proxy_host`` and
  ``Connection: close``, or no Connection header when connections are kept alive); an
  empty value removes the header;
- then the client's headers, except the ones set above, the hop-by-hop ones (RFC 9110
  §7.6.1: Connection and every header it names, Keep-Alive, Proxy-Connection, TE,
  Trailer, Transfer-Encoding, Upgrade) and Expect (portico answers 100-continue itself);
- the body's framing is ours: Content-Length when the client gave one, chunked otherwise.

Back to the client: the upstream's headers, except hop-by-hop ones and the hidden ones
(Date, Server, X-Pad, X-Accel-*, plus ``proxy_hide_header``, minus
``proxy_pass_header``); portico adds its own Date, Server and framing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from portico.http.parser import METHODS, header_name
from portico.http.uri import escape_uri, parse_target, split_target
from portico.memo import remember
from portico.variables import Template, compile_template

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# not forwarded to the upstream besides the hop-by-hop ones: we frame the body ourselves
# and answer "Expect: 100-continue" ourselves
_REQUEST_DROPPED = HOP_BY_HOP | {"content-length", "expect"}
HIDDEN_BY_DEFAULT = frozenset(
    {
        "date",
        "server",
        "x-pad",
        "x-accel-expires",
        "x-accel-redirect",
        "x-accel-limit-rate",
        "x-accel-buffering",
        "x-accel-charset",
    }
)
_RESPONSE_FRAMING = frozenset({"content-length", "transfer-encoding"})


def connection_tokens(value: str) -> set[str]:
    """Header names listed in a Connection header (they are hop-by-hop too)."""
    return {token.strip().lower() for token in value.split(",") if token.strip()}


_PASSING_SIZE = 1024
_METHOD_PREFIXES = {method: raw + b" " for raw, method in METHODS.items()}
_PASSING_NAME_MAX = 64
_MADE_SIZE = 256


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """Everything about the upstream request that is known when the config loads."""

    uri: str | None  # proxy_pass's URI part
    prefix: str  # what the location matched, replaced by ``uri``
    # (lowercase name, "Name: " as bytes, value template) for each proxy_set_header,
    # non-empty constant values already encoded in ``constant_block``
    dynamic: tuple[tuple[str, bytes, Template], ...]
    constant_block: bytes
    overridden: frozenset[str]  # lowercase names the set_header lines own
    # our own Connection line ("close" without keep-alive), unless set_header owns it
    connection: bytes
    version: bytes = b"HTTP/1.1"  # proxy_http_version
    # client header names seen before → their lowercase form if they go on, "" if
    # not (hop-by-hop, or owned by a set_header line): decided once per name
    passing: dict[bytes, str] = field(default_factory=dict, compare=False)
    # request heads as received (parser.py shares one per repeated request) → the
    # upstream head made of each, while no set_header value is rendered per request
    made: dict[Any, bytes] = field(default_factory=dict, compare=False)
    # derived: " HTTP/1.1\r\n" after the target; the connection line and the empty
    # line that end a head with neither body nor upgrade
    line_end: bytes = field(init=False, compare=False)
    plain_end: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "line_end", b" " + self.version + b"\r\n")
        object.__setattr__(self, "plain_end", self.connection + b"\r\n")

    def target(self, request: Any) -> bytes:
        """The request-target to send."""
        if self.uri is None:
            target: bytes = request.target
            if (
                request.redirects
                and request.path != parse_target(target, request.conn.binding.merge_slashes)[0]
            ):
                # after an internal redirect to another URI (not to a named location,
                # which keeps it) the original target no longer applies
                path = escape_uri(request.path)
                return (path + ("?" + request.query if request.query else "")).encode()
            if target[:1] != b"/":
                # an absolute-form target ("GET http://host/x"): the upstream gets the
                # origin form, or its authority would override our Host header
                raw_path, raw_query = split_target(target)
                return raw_path + (b"?" + raw_query if raw_query else b"")
            return target
        path = request.path
        rest = path[len(self.prefix) :] if path.startswith(self.prefix) else path
        target = escape_uri(self.uri + rest)
        if request.query:
            target += "?" + request.query
        return target.encode("latin-1")

    def request_head(
        self, request: Any, body_length: int | None, chunked: bool, upgrade: str | None
    ) -> bytes:
        """The upstream head for ``request`` as it stands. A request that was not
        redirected is its head as received, so with no value rendered per request the
        result is the same for the same head: made once per head, for the heads that
        requests share (parser.py: whole requests without a body, read again)."""
        received = request.head
        kept = received.shared and not (request.redirects or self.dynamic)
        made = self.made.get(received) if kept else None
        if made is None:
            made = self.head(
                request, request.method, self.target(request), body_length, chunked, upgrade
            )
            if kept:
                remember(self.made, received, made, _MADE_SIZE)
        return made

    def head(
        self,
        request: Any,
        method: str,
        target: bytes,
        body_length: int | None,
        chunked: bool,
        upgrade: str | None,
    ) -> bytes:
        """The whole request head for the upstream."""
        lines = [
            (_METHOD_PREFIXES.get(method) or method.encode("ascii") + b" ")
            + target
            + self.line_end,
            self.constant_block,
        ]
        for _, prefix, template in self.dynamic:
            value = template.render(request)
            if value:
                lines.append(prefix + _encode_value(value) + b"\r\n")
        overridden = self.overridden
        connection = request.headers.get("connection")
        named = connection_tokens(connection) if connection else ()
        passing = self.passing
        for name, value in request.head.raw_headers:
            lower = passing.get(name)
            if lower is None:
                lower = header_name(name)
                if lower in _REQUEST_DROPPED or lower in overridden:
                    lower = ""
                if len(name) <= _PASSING_NAME_MAX:
                    remember(passing, name, lower, _PASSING_SIZE)
            if lower and (not named or lower not in named):
                lines += (name, b": ", value, b"\r\n")
        if upgrade is None and body_length is None and not chunked:
            lines.append(self.plain_end)
            return b"".join(lines)
        if upgrade is not None:
            # a tunnel: the client's Upgrade goes on (unless set_header says otherwise)
            if "upgrade" not in overridden:
                lines.append(b"Upgrade: " + upgrade.encode("latin-1") + b"\r\n")
            if "connection" not in overridden:
                lines.append(b"Connection: upgrade\r\n")
        else:
            lines.append(self.connection)
        if body_length is not None:
            lines.append(b"Content-Length: %d\r\n" % body_length)
        elif chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


def _encode_value(value: str) -> bytes:
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    return value.encode("latin-1", "replace")


def compile_request(
    uri: str | None,
    prefix: str,
    set_headers: Sequence[tuple[str, Template]],
    keepalive: bool,
    version: str = "1.1",
    proxy_host: str | None = None,
) -> RequestTemplate:
    """Merge the defaults with the location's ``proxy_set_header`` lines, once.
    ``$proxy_host`` is known per location (proxy_pass's host): a value made of it
    alone, as the default Host line is, is rendered here and not per request."""
    known = SimpleNamespace(proxy_host=proxy_host)
    headers: dict[str, tuple[str, Template]] = {
        "host": ("Host", compile_template("$proxy_host")),
    }
    for name, value in set_headers:
        headers[name.lower()] = (name, value)
    constant = []
    dynamic = []
    for lower, (name, value) in headers.items():
        if value.is_constant or (proxy_host is not None and set(value.variables) == {"proxy_host"}):
            text = value.render(known)
            if text:
                constant.append(f"{name}: {text}\r\n".encode("latin-1"))
        else:
            dynamic.append((lower, f"{name}: ".encode("latin-1"), value))
    keepalive = keepalive and version == "1.1"
    connection = b"" if keepalive or "connection" in headers else b"Connection: close\r\n"
    return RequestTemplate(
        uri,
        prefix,
        tuple(dynamic),
        b"".join(constant),
        frozenset(headers),
        connection,
        b"HTTP/" + version.encode(),
    )


# Connection values that name no other header (every one of them is dropped anyway)
_PLAIN_CONNECTION = frozenset({b"", b"keep-alive", b"close", b"upgrade"})
_CONNECTION_VALUES = re.compile(rb"\nconnection:[ \t]*([^\r]*)", re.I)
_SERVER_LINE = re.compile(rb"\nserver:", re.I)
_LOCATION_LINE = re.compile(rb"(\nlocation:[ \t]*)([^\r]*)", re.I)
_REFRESH_LINE = re.compile(rb"(\nrefresh:[ \t]*)([^\r]*)", re.I)
_REFRESH_URL = re.compile(rb"url=", re.I)
_DATE_LINE = re.compile(rb"\ndate:", re.I)


def _lines_named(names: Iterable[bytes]) -> re.Pattern[bytes]:
    """Header lines whose name is one of ``names``, as "\\nName: value\\r" (the
    line's own end stays, for the line before it); a pattern that starts with a
    literal is searched for much faster than one that starts with ``^``."""
    alternatives = b"|".join(re.escape(name) for name in sorted(names))
    return re.compile(rb"\n(?:" + alternatives + rb"):[^\r]*\r", re.I)


# Header blocks filtered before, per location: a backend sends the same head again and
# again (only Date changes, once a second), so most answers are one dict lookup.
_MEMO_SIZE = 256
_MEMO_BLOCK_MAX = 2048


@dataclass(frozen=True, slots=True)
class ResponseFilter:
    hidden: frozenset[str]
    dropped: re.Pattern[bytes]  # hidden, hop-by-hop and framing lines
    # Server or Date may pass (proxy_pass_header): then look for them
    may_own: bool
    # proxy_redirect: (start of a Location or Refresh URL, what replaces it), in order
    redirects: tuple[tuple[bytes, bytes], ...] = ()
    memo: dict[bytes, tuple[bytes, int]] = field(default_factory=dict, compare=False)

    def headers(self, block: bytes) -> tuple[bytes, int]:
        """The upstream's header lines for the client, and which of Server (1) and
        Date (2) they carry themselves. ``block`` is the head's lines as received
        (see http/client.py: validated, so every line is "Name: value\\r\\n"), after
        a "\\n"."""
        memo = self.memo
        known = memo.get(block)
        if known is not None:
            return known
        known = self._filter(block)
        if len(block) <= _MEMO_BLOCK_MAX:  # a big head is rare, and would fill memory
            remember(memo, block, known, _MEMO_SIZE)
        return known

    def _filter(self, block: bytes) -> tuple[bytes, int]:
        kept = self.dropped.sub(b"", block)
        # every Connection line counts (a header may be named in any of them)
        for value in _CONNECTION_VALUES.findall(block):
            if value.rstrip(b" \t").lower() not in _PLAIN_CONNECTION:
                named = connection_tokens(value.decode("latin-1"))
                kept = _lines_named(token.encode("latin-1") for token in named).sub(b"", kept)
        own = 0
        if self.may_own:
            if _SERVER_LINE.search(kept):
                own |= 1
            if _DATE_LINE.search(kept):
                own |= 2
        if self.redirects:
            kept = _LOCATION_LINE.sub(self._rewrite_location, kept)
            kept = _REFRESH_LINE.sub(self._rewrite_refresh, kept)
        return kept[1:], own

    def _redirected(self, url: bytes) -> bytes:
        for redirect, replacement in self.redirects:
            if url.startswith(redirect):
                return replacement + url[len(redirect) :]
        return url

    def _rewrite_location(self, line: re.Match[bytes]) -> bytes:
        return line[1] + self._redirected(line[2])

    def _rewrite_refresh(self, line: re.Match[bytes]) -> bytes:
        value = line[2]  # "5; url=http://..."
        url = _REFRESH_URL.search(value)
        if url is None:
            return line[0]
        return line[1] + value[: url.end()] + self._redirected(value[url.end() :])


def compile_response(
    hide: Iterable[str], pass_: Iterable[str], redirects: Iterable[tuple[str, str]] = ()
) -> ResponseFilter:
    hidden = (HIDDEN_BY_DEFAULT | {name.lower() for name in hide}) - {
        name.lower() for name in pass_
    }
    dropped = _lines_named(
        name.encode("latin-1") for name in hidden | HOP_BY_HOP | _RESPONSE_FRAMING
    )
    return ResponseFilter(
        frozenset(hidden),
        dropped,
        not {"server", "date"} <= hidden,
        tuple((a.encode("latin-1"), b.encode("latin-1")) for a, b in redirects),
    )


def redirect_rules(
    entries: Sequence[str | tuple[str, str]], target: str, uri: str | None, prefix: str
) -> list[tuple[str, str]]:
    """proxy_redirect's lines as (redirect, replacement) pairs; ``default`` (also when
    there is no line) is the proxy_pass URL (``target`` and ``uri``) and the location's
    ``prefix``, or, without a URI part, the URL's root and "/" (nginx's rule)."""
    rules: list[tuple[str, str]] = []
    for entry in entries or ("default",):
        if entry == "off":
            return []
        if entry == "default":
            if uri is not None:
                rules.append((f"http://{target}{uri}", prefix))
            else:
                rules.append((f"http://{target}/", "/"))
        elif isinstance(entry, tuple):
            rules.append(entry)
    return rules
