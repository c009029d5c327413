"""Requests off the wire: bytes in, events out, no I/O (the h11 shape, httptools inside).

``RequestReader.feed(data)`` parses what it can and appends events to ``events``:

- a ``RequestHead`` when a request's head is complete,
- ``bytes`` for each piece of its body (de-chunked),
- ``END`` when the message is complete.

It raises ``RemoteProtocolError`` with the status the error implies when the bytes
cannot be a valid request; the connection must then answer that status and close,
because framing can no longer be trusted.

Framing rules (RFC 9112 §6, and nginx's answers where it is not laxer: nginx takes a
bare LF for a line end, which we refuse, as a request smuggling vector):

- ``Transfer-Encoding`` together with ``Content-Length``            → 400
- two ``Content-Length`` headers (even equal ones)                  → 400
- two ``Transfer-Encoding`` or two ``Host`` header lines            → 400
- a ``Transfer-Encoding`` other than exactly ``chunked``            → 501
- a ``Transfer-Encoding`` in an HTTP/1.0 request                    → 400
- an HTTP/1.1 request without ``Host``                              → 400
- HTTP/2.0 and later on an HTTP/1 connection                        → 505
- HTTP/0.9 (a request line without a version), HTTP/0.x             → 400
- a request line (method, target, version, CRLF) longer than the
  buffer of ``large_client_header_buffers``                         → 414
- a header line longer than the buffer, or a head longer than
  NUMBER x SIZE of ``large_client_header_buffers``                  → 431
- any other malformed request line or header (bare LF line ends,
  spaces before colons, control characters, bad chunk sizes)        → 400

We answer 431 (RFC 6585) where nginx answers 400 with "Request Header Or Cookie Too
Large": the newer code says exactly what is wrong. Trailers of chunked bodies are read
and dropped. A header whose name holds an underscore is dropped too, as nginx ignores
it, unless ``underscores_in_headers`` allows it. httptools' callbacks only record;
every decision is made here.

The target and the Host are read here too: a head carries its normalized path, its raw
query and its host name (``Example.COM:80`` → ``example.com``; an absolute-form
target's authority replaces Host), and a target or Host that cannot be one is a 400
like any other malformed head.

Whole requests are remembered. A read that holds exactly one complete request without
a body, fed to a reader with nothing pending, is parsed the same way every time: its
head is kept under those bytes (``known_heads``, one bounded table per reader setting),
and a connection with nothing pending that receives the same bytes again takes the
head from there instead of feeding them (protocol.py). Clients send the same request
heads again and again on a connection (the same headers, often the same target); the
head is immutable once made, so requests share it.

The events must not depend on how the bytes were split into reads (framing bugs hide
at buffer boundaries; tests/unit/test_parser.py feeds its corpus whole, by lines, by
bytes and in random splits). Hence:

- the size of a head is counted from what the callbacks report (request target, header
  names and values), not from the reads it arrived in; the count of raw bytes fed
  while a head is unfinished only bounds the memory httptools may buffer for a line
  that never ends;
- a field value loses its trailing whitespace (``OWS`` in RFC 9112 §5: httptools drops
  the leading one only), so ``Content-Length: 5 `` and ``Transfer-Encoding: chunked ``
  mean what they say;
- after an ``Upgrade`` (or ``CONNECT``) request's head the reader pauses, as h11 does
  (MIGHT_SWITCH_PROTOCOL): what follows may be another protocol. Bytes fed while paused
  are held unparsed (``held``). If the request is tunnelled, the tunnel takes them
  (``take_held``); if it is answered like any other, ``resume`` parses them as HTTP, so
  a request pipelined behind an Upgrade nobody accepts is still answered, whatever the
  split.

HTTP/1.x with a minor version above 1 is read as HTTP/1.1 (RFC 9112 §2.3), and any
version from 2 on gets 505 rather than httptools' generic "invalid version" (400).
"""

from __future__ import annotations

from collections import deque

import httptools

from portico.errors import RemoteProtocolError
from portico.http.uri import parse_target
from portico.memo import remember
from portico.routing import normalize_host


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()


def request_line(method: str, target: bytes, version: str) -> str:
    """A request line as text, as logs write it ("GET /x HTTP/1.1")."""
    return f"{method} {target.decode('latin-1')} HTTP/{version}"


class RequestHead:
    """A request line and its headers, as received (the event), and what the target and
    Host say. Shared by every request made from the same bytes (see ``known_heads``):
    nothing may change it once made."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "host",
        "keep_alive",
        "line",
        "method",
        "path",
        "query",
        "raw_headers",
        "shared",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        headers: dict[str, str],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        upgrade: bool,
        path: str = "/",
        query: str = "",
        host: str = "",
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        # the request line as text ($request, and the error log's "request:")
        self.line = request_line(method, target, version)
        # set once, as the reader remembers it (known_heads): requests made of the same
        # bytes then share it, and what is made of a head alone may be kept per head
        self.shared = False
        # the target's normalized path and raw query, and the host name (from an
        # absolute-form target's authority, else from Host; "" without either)
        self.path = path
        self.query = query
        self.host = host
        # as received, for forwarding; and lowercase name → value (repeated headers
        # joined with ", ", cookies with "; ") for lookups
        self.raw_headers = raw_headers
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade


Event = RequestHead | bytes | _End

# the methods most requests use, as received → as a str
METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
# ord("_"): an int is found in bytes with one memchr, b"_" through the buffer protocol
_UNDERSCORE = 95
# header names as received → lowercase str: clients send the same few again and again
_NAMES: dict[bytes, str] = {}


def header_name(name: bytes) -> str:
    """A header name as a lowercase str (remembered, in a bounded table)."""
    return remember(_NAMES, name, name.decode("latin-1").lower(), 4096)


# Whole requests parsed before, per reader setting (line size, header count,
# underscores, merge_slashes): the exact bytes of a read → the head they make.
HeadTable = dict[bytes, RequestHead]
_KNOWN_HEADS: dict[tuple[int, int, bool, bool], HeadTable] = {}
# a table this full is emptied; a read longer than this is not kept (request heads of
# browsers are under 2 KB; a longer one is rare and would make the table large)
KNOWN_HEADS_MAX = 256
KNOWN_HEAD_SIZE_MAX = 2048


def known_heads(limits: tuple[int, int, bool, bool]) -> HeadTable:
    """The table of whole requests read with these settings (one per process)."""
    table = _KNOWN_HEADS.get(limits)
    if table is None:
        table = _KNOWN_HEADS[limits] = {}
    return table


class RequestReader:
    """Parses a stream of pipelined requests on one connection."""

    __slots__ = (
        "_head_bytes",
        "_head_length",
        "_head_size",
        "_headers",
        "_in_trailers",
        "_known",
        "_line_size",
        "_merge_slashes",
        "_parser",
        "_raw_headers",
        "_transfer_encoding",
        "_underscores",
        "_url",
        "events",
        "held",
        "in_head",
        "paused",
    )

    def __init__(
        self,
        line_size: int = 8192,
        header_count: int = 4,
        underscores: bool = False,
        merge_slashes: bool = True,
    ) -> None:
        self._parser = httptools.HttpRequestParser(self)
        # any "HTTP/d.d" passes httptools, so that on_headers_complete can tell 2.0+
        # (505) and 1.2 (read as 1.1) from garbage; nothing else is relaxed
        self._parser.set_dangerous_leniencies(lenient_version=True)
        self._line_size = line_size  # the request line, and each header line
        # underscores_in_headers: else a header whose name has one is dropped, as nginx
        # ignores it (a WSGI environ or CGI would read X_User as X-User)
        self._underscores = underscores
        self._merge_slashes = merge_slashes  # nginx's merge_slashes, for the path
        self._known = known_heads((line_size, header_count, underscores, merge_slashes))
        self._head_size = line_size * header_count + line_size
        self.events: deque[Event] = deque()
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] = {}
        self._transfer_encoding: bytes | None = None
        self.in_head = False
        self._in_trailers = False
        self._head_bytes = 0  # raw bytes fed while the head is unfinished
        self._head_length = 0  # the head's size, from the callbacks (split-proof)
        # after an Upgrade (or CONNECT) head: parsing waits, bytes are held unparsed
        self.paused = False
        self.held = bytearray()

    def take_held(self) -> bytes:
        """The bytes after an Upgrade head, for a tunnel (the reader stays paused)."""
        held, self.held = bytes(self.held), bytearray()
        return held

    def resume(self) -> None:
        """The Upgrade was not accepted: parse what was held as HTTP again."""
        self.paused = False
        held, self.held = bytes(self.held), bytearray()
        if held:
            self.feed(held)

    def feed(self, data: bytes) -> None:
        if self.paused:
            self.held += data  # a bytearray: appending does not copy what is held
            return
        events = self.events
        fresh = not self.in_head and not events  # nothing of another request pending
        if self.in_head:
            # httptools buffers an unfinished header line itself, out of our sight: count
            # what a head in progress receives, so a head that never ends cannot grow
            # memory without bound (the read in which a head starts is not counted; one
            # read is bounded anyway).
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # httptools stops at the end of the head and hands back the offset of
            # what follows; until the answer is known, that is not ours to parse
            self.paused = True
            self.held = bytearray(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if not isinstance(cause, RemoteProtocolError):
                cause = RemoteProtocolError(f"invalid request: {e}")
            raise self._drop_unfinished(cause) from None
        except httptools.HttpParserError as e:
            raise self._drop_unfinished(self._error(e)) from None
        # a head's size is checked exactly by the callbacks; this bound (one unfinished
        # line more than a head may hold) only caps what httptools buffers out of sight
        if self.in_head:
            if self._head_bytes > self._head_size + self._line_size:
                raise self._drop_unfinished(RemoteProtocolError("request header too large", 431))
        elif fresh and len(events) == 2 and len(data) <= KNOWN_HEAD_SIZE_MAX:
            # exactly one whole request, begun in this read: these bytes always make
            # this head. Not kept: a head with a body or an Upgrade (what follows its
            # head is not the same each time), the end of a body read before.
            head = events[0]
            if (
                head.__class__ is RequestHead
                and events[1] is END
                and not head.content_length  # type: ignore[union-attr]
                and not head.chunked  # type: ignore[union-attr]
                and not head.upgrade  # type: ignore[union-attr]
            ):
                head.shared = True  # type: ignore[union-attr]
                remember(self._known, data, head, KNOWN_HEADS_MAX)  # type: ignore[arg-type]

    def _drop_unfinished(self, error: RemoteProtocolError) -> RemoteProtocolError:
        """Nothing of the request in error may be acted on: httptools reports a head
        before some of its checks (a Transfer-Encoding it cannot frame), and pieces of a
        body before a bad chunk. Complete requests before it stay queued."""
        events = self.events
        while events and events[-1] is not END:
            events.pop()
        return error

    def _error(self, error: Exception) -> RemoteProtocolError:
        if (
            self.in_head
            and self._transfer_encoding is not None
            and self._transfer_encoding.lower() != b"chunked"
        ):
            return RemoteProtocolError("unsupported transfer encoding", 501)
        if isinstance(error, httptools.HttpParserInvalidMethodError):
            return RemoteProtocolError("invalid method")
        message = str(error.args[0]) if error.args else type(error).__name__
        if "Transfer-Encoding" in message and "Content-Length" not in message:
            if "header value" in message and self._transfer_encoding is not None:
                # a second line: httptools checks it before on_header can see it
                return RemoteProtocolError("duplicate Transfer-Encoding header")
            # httptools refuses "chunked" twice or not last ("chunked, chunked"), and
            # does not see "chunked" followed by a tab: codings we do not implement
            return RemoteProtocolError(f"unsupported transfer encoding: {message}", 501)
        return RemoteProtocolError(f"invalid request: {message}")

    # -- httptools callbacks: record only ----------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self._head_bytes = 0
        self._in_trailers = False
        self._head_length = 0
        self._url = b""
        self._raw_headers = []
        self._headers = {}
        self._transfer_encoding = None

    def on_url(self, piece: bytes) -> None:
        url = self._url = self._url + piece if self._url else piece
        # the whole request line must fit: method, two spaces, "HTTP/1.1" and CRLF (the
        # method is asked for only near the limit: none that httptools knows has 20 bytes)
        if len(url) + 32 > self._line_size and (
            len(self._parser.get_method()) + len(url) + 12 > self._line_size
        ):
            raise RemoteProtocolError("request URI too long", 414)
        self._head_length += len(piece)
        if self._head_length > self._head_size:
            raise RemoteProtocolError("request header too large", 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            return
        # field-value = *field-content, surrounded by OWS (SP / HTAB) that is not part
        # of it; httptools has skipped the leading OWS, the trailing is still there
        value = value.rstrip(b" \t")
        size = len(name) + len(value) + 2  # ": "
        if size > self._line_size:
            raise RemoteProtocolError("request header line too large", 431)
        head_length = self._head_length = self._head_length + size + 2  # and CRLF
        if head_length > self._head_size:
            raise RemoteProtocolError("request header too large", 431)
        if _UNDERSCORE in name and not self._underscores:
            return
        self._raw_headers.append((name, value))
        key = _NAMES.get(name) or header_name(name)
        headers = self._headers
        if key not in headers:
            headers[key] = value.decode("latin-1")
        elif key == "host" or key == "transfer-encoding":
            # RFC 9112 §3.2 (Host: MUST 400); two framing headers are a smuggling
            # attempt whatever they say (nginx: "client sent duplicate header line")
            raise RemoteProtocolError(f"duplicate {name.decode('latin-1')} header")
        else:
            joiner = "; " if key == "cookie" else ", "
            headers[key] = headers[key] + joiner + value.decode("latin-1")
        if key == "transfer-encoding":
            self._transfer_encoding = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        major = version[0]
        if major == "0":
            raise RemoteProtocolError(f"HTTP/{version} is not supported")
        if major != "1":
            raise RemoteProtocolError("HTTP version not supported", 505)
        if version != "1.0":
            version = "1.1"  # 1.2 and later minors: as 1.1 (RFC 9112 §2.3)
        raw_method = parser.get_method()
        method = METHODS.get(raw_method) or raw_method.decode("ascii")
        # the request line (two spaces, "HTTP/1.1", CRLF) and the empty line
        self._head_length += len(method) + 14
        if self._head_length > self._head_size:
            raise RemoteProtocolError("request header too large", 431)
        headers = self._headers
        chunked = False
        if self._transfer_encoding is not None:
            if version == "1.0":
                # RFC 9112 §6.1: the framing of such a message cannot be trusted
                raise RemoteProtocolError("Transfer-Encoding in an HTTP/1.0 request")
            if self._transfer_encoding.lower() != b"chunked":
                raise RemoteProtocolError("unsupported transfer encoding", 501)
            chunked = True
        if version == "1.1" and "host" not in headers:
            raise RemoteProtocolError("HTTP/1.1 request without a Host header")
        content_length = None
        length_text = headers.get("content-length")
        if length_text is not None:
            # httptools has checked the digits and rejected duplicates
            content_length = int(length_text)
        path, query, authority = parse_target(self._url, self._merge_slashes)
        # RFC 9112 §3.2.2: an absolute-form target's authority replaces Host
        host = authority.decode("latin-1") if authority is not None else headers.get("host", "")
        if host:
            name = normalize_host(host)
            if name is None:
                raise RemoteProtocolError(f"invalid host in request: {host!r}")
            host = name
        self.in_head = False
        self._in_trailers = True
        self.events.append(
            RequestHead(
                method,
                self._url,
                version,
                self._raw_headers,
                headers,
                parser.should_keep_alive(),
                content_length,
                chunked,
                parser.should_upgrade(),
                path,
                query,
                host,
            )
        )

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(END)
