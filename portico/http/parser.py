"""Requests off the wire: bytes in, events out, no I/O (the h11 shape, httptools inside).

``RequestReader.feed(data)`` parses what it can and appends events to ``events``:

- a ``RequestHead`` when a request's head is complete,
- ``bytes`` for each piece of its body (de-chunked),
- ``END`` when the message is complete.

It raises ``RemoteProtocolError`` with the status the error implies when the bytes
cannot be a valid request; the connection must then answer that status and close,
because framing can no longer be trusted.

Framing rules (RFC 9112 §6, and nginx's answers):

- ``Transfer-Encoding`` together with ``Content-Length``            → 400
- two ``Content-Length`` headers (even equal ones)                  → 400
- a ``Transfer-Encoding`` other than exactly ``chunked``            → 501
- HTTP/2.0 and later on an HTTP/1 connection                        → 505
- HTTP/0.9 (a request line without a version)                       → 400
- a request line (method, target, version) longer than the buffer   → 414
- a header line longer than the buffer, or a head longer than
  NUMBER x SIZE of ``large_client_header_buffers``                  → 431
- any other malformed request line or header (bare LF line ends,
  spaces before colons, control characters, bad chunk sizes)        → 400

We answer 431 (RFC 6585) where nginx answers 400 with "Request Header Or Cookie Too
Large": the newer code says exactly what is wrong. Trailers of chunked bodies are read
and dropped. httptools' callbacks only record; every decision is made here.
"""

from __future__ import annotations

from collections import deque

import httptools

from portico.errors import RemoteProtocolError


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()


class RequestHead:
    """A request line and its headers, as received (the event)."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw_headers",
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
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        # as received, for forwarding; and lowercase name → value (repeated headers
        # joined with ", ", cookies with "; ") for lookups
        self.raw_headers = raw_headers
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade


Event = RequestHead | bytes | _End


class RequestReader:
    """Parses a stream of pipelined requests on one connection."""

    __slots__ = (
        "_head_bytes",
        "_head_size",
        "_header_line_size",
        "_headers",
        "_in_head",
        "_in_trailers",
        "_line_size",
        "_parser",
        "_raw_headers",
        "_transfer_encoding",
        "_url",
        "events",
        "upgrade_data",
    )

    def __init__(self, line_size: int = 8192, header_count: int = 4) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._line_size = line_size
        self._header_line_size = line_size
        self._head_size = line_size * header_count + line_size
        self.events: deque[Event] = deque()
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] = {}
        self._transfer_encoding: bytes | None = None
        self._in_head = False
        self._in_trailers = False
        self._head_bytes = 0
        # bytes that followed an Upgrade (or CONNECT) request: they belong to the tunnel
        self.upgrade_data: bytes | None = None

    @property
    def in_head(self) -> bool:
        """Some of a request head has arrived, but not all of it."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        if self._in_head:
            # httptools buffers an unfinished header line itself, out of our sight: count
            # what a head in progress receives, so a head that never ends cannot grow
            # memory without bound (the read in which a head starts is not counted; one
            # read is bounded anyway).
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_data = data[upgrade.args[0] :]
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, RemoteProtocolError):
                raise cause from None
            raise RemoteProtocolError(f"invalid request: {e}") from None
        except httptools.HttpParserError as e:
            raise self._error(e) from None
        if self._in_head and self._head_bytes > self._head_size:
            raise RemoteProtocolError("request header too large", 431)

    def _error(self, error: Exception) -> RemoteProtocolError:
        if (
            self._in_head
            and self._transfer_encoding is not None
            and self._transfer_encoding.lower() != b"chunked"
        ):
            return RemoteProtocolError("unsupported transfer encoding", 501)
        if isinstance(error, httptools.HttpParserInvalidMethodError):
            return RemoteProtocolError("invalid method")
        message = str(error.args[0]) if error.args else type(error).__name__
        return RemoteProtocolError(f"invalid request: {message}")

    # -- httptools callbacks: record only ----------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._in_trailers = False
        self._url = b""
        self._raw_headers = []
        self._headers = {}
        self._transfer_encoding = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._line_size:
            raise RemoteProtocolError("request URI too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            return
        if len(name) + len(value) + 2 > self._header_line_size:
            raise RemoteProtocolError("request header line too large", 431)
        self._raw_headers.append((name, value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        if previous is None:
            self._headers[key] = text
        else:
            self._headers[key] = previous + ("; " if key == "cookie" else ", ") + text
        if key == "transfer-encoding":
            self._transfer_encoding = (
                value
                if self._transfer_encoding is None
                else self._transfer_encoding + b", " + value
            )

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version == "0.9":
            raise RemoteProtocolError("HTTP/0.9 is not supported")
        if version[0] != "1":
            raise RemoteProtocolError("HTTP version not supported", 505)
        headers = self._headers
        chunked = False
        if self._transfer_encoding is not None:
            if self._transfer_encoding.lower() != b"chunked":
                raise RemoteProtocolError("unsupported transfer encoding", 501)
            chunked = True
        content_length = None
        length_text = headers.get("content-length")
        if length_text is not None:
            # httptools has checked the digits and rejected duplicates
            content_length = int(length_text)
        self._in_head = False
        self._in_trailers = True
        self.events.append(
            RequestHead(
                parser.get_method().decode("ascii"),
                self._url,
                version,
                self._raw_headers,
                headers,
                parser.should_keep_alive(),
                content_length,
                chunked,
                parser.should_upgrade(),
            )
        )

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(END)
