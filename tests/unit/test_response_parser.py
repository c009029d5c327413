"""The client side: upstream responses, whole and split."""

from __future__ import annotations

import pytest

from portico.errors import UpstreamInvalidResponse
from portico.http.client import ResponseHead, ResponseReader
from portico.http.parser import END

SIMPLE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
)


def events(data: bytes, pieces: int = 1, head_only: bool = False) -> list[object]:
    reader = ResponseReader(expect_no_body=head_only)
    size = max(1, len(data) // pieces)
    for i in range(0, len(data), size):
        reader.feed(data[i : i + size])
    out = []
    for event in reader.events:
        out.append(
            (event.status, event.content_length) if isinstance(event, ResponseHead) else event
        )
    return out


@pytest.mark.parametrize("pieces", [1, 2, 7, len(SIMPLE)])
def test_a_response_reads_the_same_however_split(pieces: int) -> None:
    seen = events(SIMPLE, pieces)
    assert seen[0] == (200, 5) and seen[-1] is END
    assert b"".join(e for e in seen[1:-1] if isinstance(e, bytes)) == b"hello"


def test_chunked_response() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert events(data) == [(200, None), b"hello", END]


def test_head_response_stops_after_the_head() -> None:
    assert events(SIMPLE[: SIMPLE.index(b"hello")], head_only=True) == [(200, 5), END]


def test_interim_100_is_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + SIMPLE
    assert events(data) == [(200, 5), b"hello", END]


def test_garbage_is_an_invalid_response() -> None:
    with pytest.raises(UpstreamInvalidResponse):
        events(b"NOT HTTP AT ALL\r\n\r\n")


def test_close_delimited_body_ends_at_eof() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
    reader.eof()
    assert reader.events[-1] is END


def test_truncated_body_at_eof_is_an_error() -> None:
    reader = ResponseReader()
    reader.feed(SIMPLE[:-2])
    with pytest.raises(UpstreamInvalidResponse):
        reader.eof()
