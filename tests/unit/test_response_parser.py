"""The client side: upstream responses, whole and split."""

from __future__ import annotations

import pytest

from portico.errors import UpstreamInvalidResponse
from portico.http.client import _KNOWN, ResponseHead, ResponseReader
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


# -- whole responses recognised by their head ---------------------------------------------

HEAD_END = SIMPLE.index(b"hello")


def known_table() -> dict[bytes, tuple[bytes, ResponseHead, int]]:
    _KNOWN.clear()
    return _KNOWN


def reader_state(reader: ResponseReader) -> tuple[object, ...]:
    return (reader.idle, reader._in_head, reader._expecting, reader._buffer, reader._stopped)


def test_a_whole_response_is_known_by_its_head_with_any_body_of_its_length() -> None:
    table = known_table()
    fed = ResponseReader()
    fed.feed(SIMPLE)
    head = fed.events[0]
    assert table == {SIMPLE[:HEAD_END]: (SIMPLE[:HEAD_END], head, 5)}
    reader = ResponseReader()
    assert reader.take_known(SIMPLE[:HEAD_END] + b"HELLO") == (head, b"HELLO")
    # the reader is where feeding would have left it, ready for the next request
    assert reader_state(reader) == reader_state(fed)
    assert not reader.events
    reader.start()
    assert reader.take_known(SIMPLE) == (head, b"hello")


@pytest.mark.parametrize(
    "data",
    [
        SIMPLE[:-1],  # a body cut short: more will come
        SIMPLE + b"x",  # bytes after the answer
        SIMPLE[:HEAD_END],  # the head alone
    ],
    ids=["short", "long", "head-alone"],
)
def test_a_read_that_is_not_exactly_the_answer_is_fed(data: bytes) -> None:
    known_table()
    ResponseReader().feed(SIMPLE)
    assert ResponseReader().take_known(data) is None


def test_only_the_start_of_an_answer_can_be_known() -> None:
    known_table()
    ResponseReader().feed(SIMPLE)
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 2")  # an answer has begun
    assert reader.take_known(SIMPLE) is None
    done = ResponseReader()
    done.feed(SIMPLE)  # answered, and no request since
    assert done.take_known(SIMPLE) is None
    assert ResponseReader(expect_no_body=True).take_known(SIMPLE) is None  # to a HEAD


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + SIMPLE,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        SIMPLE[:-2],
        SIMPLE + b"HTTP/1.1 200 OK\r\n",
    ],
    ids=["chunked", "after-100", "304", "close-delimited", "unfinished", "more-after"],
)
def test_heads_whose_framing_is_not_their_length_are_not_kept(data: bytes) -> None:
    table = known_table()
    ResponseReader().feed(data)
    assert table == {}


def test_a_connection_alternating_between_two_known_heads_gets_each() -> None:
    known_table()
    other = SIMPLE.replace(b"Server: nginx", b"Server: other")
    ResponseReader().feed(SIMPLE)
    ResponseReader().feed(other)
    reader = ResponseReader()
    for data in (SIMPLE, other, other, SIMPLE):
        taken = reader.take_known(data)
        assert taken is not None
        assert (taken[0].block in data, taken[1]) == (True, b"hello")
        reader.start()
