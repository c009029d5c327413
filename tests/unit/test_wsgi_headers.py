"""start_response's header check: what is sent, what is refused, the app's length."""

from __future__ import annotations

import pytest

from portico.wsgi.call import check_headers


def test_lines_are_encoded_and_framing_is_portico_s() -> None:
    block, declared = check_headers(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", "12"),
            ("Date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("X-Cafe", "cr\u00e8me"),
        ],
    )
    assert block == b"Content-Type: text/plain\r\nX-Cafe: cr\xe8me\r\n"
    assert declared == 12


@pytest.mark.parametrize(
    ("lengths", "declared"),
    [([], None), (["5"], 5), (["5", "7"], 5), (["x5", "7"], None), (["0"], 0)],
)
def test_the_first_content_length_counts(lengths: list[str], declared: int | None) -> None:
    headers = [("Content-Length", value) for value in lengths]
    for _ in range(2):  # the second time from the memo of checked pairs: same answer
        assert check_headers("200 OK", headers) == (b"", declared)


@pytest.mark.parametrize(
    "item",
    [
        ("Connection", "close"),
        ("Transfer-Encoding", "chunked"),
        ("Bad Name", "x"),
        ("X-Split", "a\r\nInjected: 1"),
        ("X-Nul", "a\0"),
        ["X-List", "x"],
        ("X-Bytes", b"x"),
        ("X-Three", "x", "y"),
        "X-Str: x",
    ],
)
def test_a_bad_header_is_refused_every_time(item: object) -> None:
    for _ in range(2):  # a refused pair is never remembered as good
        with pytest.raises(AssertionError):
            check_headers("200 OK", [item])


@pytest.mark.parametrize("status", ["200", "OK 200", b"200 OK", "2OO OK", 200])
def test_a_bad_status_is_refused(status: object) -> None:
    with pytest.raises(AssertionError):
        check_headers(status, [])


def test_a_long_header_value_is_checked_every_time_and_not_remembered() -> None:
    from portico.wsgi.call import _CHECKED

    pair = ("X-Echo", "v" * 2000)
    assert check_headers("200 OK", [pair]) == (b"X-Echo: " + b"v" * 2000 + b"\r\n", None)
    assert pair not in _CHECKED
