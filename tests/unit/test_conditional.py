"""Validators, conditional requests (RFC 9110 §13) and byte ranges (RFC 9110 §14)."""

from __future__ import annotations

import email.utils

import pytest

from portico.static.conditional import (
    UNSATISFIABLE,
    Unsatisfiable,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    make_etag,
    parse_http_date,
    parse_range,
)

RFC_EXAMPLE = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example

# --- dates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (RFC_EXAMPLE, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (RFC_EXAMPLE + 0.999, "Sun, 06 Nov 1994 08:49:37 GMT"),  # floor, not round
        (951782400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1700000000, "Tue, 14 Nov 2023 22:13:20 GMT"),
        (2147483648, "Tue, 19 Jan 2038 03:14:08 GMT"),  # past 32-bit time_t
        (253402300799, "Fri, 31 Dec 9999 23:59:59 GMT"),
        (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
    ],
)
def test_http_date(ts: float, text: str) -> None:
    assert http_date(ts) == text
    assert parse_http_date(text) == float(int(ts // 1))


def test_http_date_agrees_with_email_utils() -> None:
    for ts in range(0, 4_000_000_000, 86_399_999):
        assert http_date(ts) == email.utils.formatdate(ts, usegmt=True)


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime, day padded with a space
        "Sun Nov 06 08:49:37 1994",  # asctime, two-digit day
        "Mon, 06 Nov 1994 08:49:37 GMT",  # weekday not checked against the date
    ],
)
def test_parse_http_date_forms(text: str) -> None:
    assert parse_http_date(text) == RFC_EXAMPLE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thursday, 01-Jan-70 00:00:00 GMT", 0.0),
        ("Tuesday, 31-Dec-69 00:00:00 GMT", 3155673600.0),  # 2069
        ("Saturday, 01-Jan-00 00:00:00 GMT", 946684800.0),  # 2000
        ("Thu, 31 Dec 1998 23:59:60 GMT", 915148800.0),  # leap second
        ("Tue, 29 Feb 2000 12:00:00 GMT", 951825600.0),
    ],
)
def test_parse_http_date_values(text: str, expected: float) -> None:
    assert parse_http_date(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "784111777",
        "sun, 06 Nov 1994 08:49:37 GMT",  # case-sensitive
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        " Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT ",
        "Sun, 06 Nov 1994 08:49:37 GMT; length=123",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 23:60:00 GMT",
        "Sun, 06 Nov 1994 23:59:61 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 29 Feb 1900 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Xyz 1994 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 94",
        "Sun, 06 Nov 1994 08:49:37 GMT\n",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # Arabic-Indic digits
    ],
)
def test_parse_http_date_rejects(text: str) -> None:
    assert parse_http_date(text) is None


# --- make_etag ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mtime", "size", "etag"),
    [
        (0x5F3C1A2B, 1024, '"5f3c1a2b-400"'),
        (0x5F3C1A2B + 0.75, 1024, '"5f3c1a2b-400"'),
        (1700000000, 0, '"6553f100-0"'),
        (1, 0xABCDEF, '"1-abcdef"'),
    ],
)
def test_make_etag(mtime: float, size: int, etag: str) -> None:
    assert make_etag(mtime, size) == etag


# --- evaluate_preconditions ----------------------------------------------------

ETAG = '"5f3c1a2b-400"'
OTHER = '"deadbeef-1"'
MTIME = RFC_EXAMPLE + 0.5  # sub-second part: compared in whole seconds
SAME = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"


def pre(
    method: str = "GET",
    im: str | None = None,
    inm: str | None = None,
    ims: str | None = None,
    ius: str | None = None,
    mode: str = "exact",
    etag: str = ETAG,
) -> int | None:
    return evaluate_preconditions(method, im, inm, ims, ius, etag, MTIME, mode)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # no conditions
        ({}, None),
        ({"method": "POST"}, None),
        # If-Match: strong comparison, '*' matches, lists
        ({"im": ETAG}, None),
        ({"im": "*"}, None),
        ({"im": OTHER}, 412),
        ({"im": f"W/{ETAG}"}, 412),  # weak never matches strongly
        ({"im": f"{OTHER}, {ETAG}"}, None),
        ({"im": f"{OTHER},{ETAG}"}, None),
        ({"im": f" , {OTHER} ,\t{ETAG} , "}, None),
        ({"im": f"{OTHER}, W/{ETAG}"}, 412),
        ({"im": "5f3c1a2b-400"}, 412),  # unquoted: malformed, confirms nothing
        ({"im": f"{ETAG} junk"}, 412),
        ({"im": f'"{ETAG}'}, 412),
        ({"im": ETAG, "etag": f"W/{ETAG}"}, 412),  # weak current tag fails If-Match
        ({"im": ETAG, "method": "PUT"}, None),
        ({"im": OTHER, "method": "DELETE"}, 412),
        ({"im": ""}, None),  # empty value counts as absent
        ({"im": "  "}, None),
        # If-Match wins over If-Unmodified-Since
        ({"im": ETAG, "ius": EARLIER}, None),
        ({"im": OTHER, "ius": LATER}, 412),
        # If-Unmodified-Since
        ({"ius": SAME}, None),
        ({"ius": LATER}, None),
        ({"ius": EARLIER}, 412),
        ({"ius": EARLIER, "method": "PUT"}, 412),
        ({"ius": "not a date"}, None),  # invalid date ignored
        # If-None-Match: weak comparison, 304 for GET/HEAD, 412 otherwise
        ({"inm": ETAG}, 304),
        ({"inm": ETAG, "method": "HEAD"}, 304),
        ({"inm": ETAG, "method": "POST"}, 412),
        ({"inm": ETAG, "method": "get"}, 412),  # methods are case-sensitive
        ({"inm": f"W/{ETAG}"}, 304),
        ({"inm": ETAG, "etag": f"W/{ETAG}"}, 304),
        ({"inm": "*"}, 304),
        ({"inm": "*", "method": "PUT"}, 412),
        ({"inm": OTHER}, None),
        ({"inm": f"{OTHER}, W/{ETAG}"}, 304),
        ({"inm": '"a,b", ' + ETAG}, 304),  # a comma inside a tag
        ({"inm": '"5f3c1a2b-400'}, None),  # malformed: matches nothing
        ({"inm": "5f3c1a2b-400"}, None),
        ({"inm": f"{ETAG} {ETAG}"}, None),
        # If-None-Match present: If-Modified-Since is not looked at
        ({"inm": OTHER, "ims": SAME}, None),
        ({"inm": ETAG, "ims": EARLIER}, 304),
        ({"inm": "", "ims": SAME}, 304),  # empty If-None-Match is absent
        # If-Modified-Since, exact mode (nginx's default)
        ({"ims": SAME}, 304),
        ({"ims": SAME, "method": "HEAD"}, 304),
        ({"ims": LATER}, None),
        ({"ims": EARLIER}, None),
        ({"ims": SAME, "method": "POST"}, None),  # only for GET/HEAD
        ({"ims": "garbage"}, None),
        ({"ims": "Sunday, 06-Nov-94 08:49:37 GMT"}, 304),
        # before mode
        ({"ims": SAME, "mode": "before"}, 304),
        ({"ims": LATER, "mode": "before"}, 304),
        ({"ims": EARLIER, "mode": "before"}, None),
        # off mode
        ({"ims": SAME, "mode": "off"}, None),
        ({"inm": ETAG, "mode": "off"}, 304),  # off is about If-Modified-Since only
        # 412 takes precedence over 304
        ({"im": OTHER, "inm": ETAG}, 412),
        ({"ius": EARLIER, "ims": SAME}, 412),
        ({"im": ETAG, "inm": ETAG}, 304),
        ({"ius": SAME, "ims": SAME}, 304),
    ],
)
def test_evaluate_preconditions(kwargs: dict[str, str], expected: int | None) -> None:
    assert pre(**kwargs) == expected


def test_evaluate_preconditions_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="ims_mode"):
        pre(mode="newer")


# --- if_range_allows -----------------------------------------------------------


@pytest.mark.parametrize(
    ("if_range", "etag", "expected"),
    [
        (None, ETAG, True),
        (ETAG, ETAG, True),
        (f" {ETAG} ", ETAG, True),
        (OTHER, ETAG, False),
        (f"W/{ETAG}", ETAG, False),  # weak tags never match
        (f"W/{ETAG}", f"W/{ETAG}", False),
        (ETAG, f"W/{ETAG}", False),
        (SAME, ETAG, True),
        ("Sunday, 06-Nov-94 08:49:37 GMT", ETAG, True),
        (EARLIER, ETAG, False),
        (LATER, ETAG, False),  # a date must be exact
        ("garbage", ETAG, False),
        ("", ETAG, False),
        ('"unterminated', ETAG, False),
        (f"{ETAG}, {ETAG}", ETAG, False),  # one tag, not a list
        ("*", ETAG, False),
    ],
)
def test_if_range_allows(if_range: str | None, etag: str, expected: bool) -> None:
    assert if_range_allows(if_range, etag, MTIME) is expected


# --- parse_range ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        # int-range
        ("bytes=0-0", 100, (0, 0)),
        ("bytes=0-99", 100, (0, 99)),
        ("bytes=10-19", 100, (10, 19)),
        ("bytes=0-1000", 100, (0, 99)),  # last clipped
        ("bytes=99-99", 100, (99, 99)),
        ("bytes=99-1000", 100, (99, 99)),
        ("bytes=0-", 100, (0, 99)),
        ("bytes=50-", 100, (50, 99)),
        ("bytes=99-", 100, (99, 99)),
        ("bytes=007-010", 100, (7, 10)),  # leading zeros are digits
        ("bytes=0-9999999999999999999", 100, (0, 99)),  # 19 digits
        ("Bytes=0-1", 100, (0, 1)),  # the unit is case-insensitive
        ("BYTES=0-1", 100, (0, 1)),
        # suffix-range
        ("bytes=-1", 100, (99, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-100", 100, (0, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=-9999999999999999999", 100, (0, 99)),
        # unsatisfiable
        ("bytes=100-", 100, UNSATISFIABLE),
        ("bytes=100-200", 100, UNSATISFIABLE),
        ("bytes=1000-", 100, UNSATISFIABLE),
        ("bytes=-0", 100, UNSATISFIABLE),
        ("bytes=-000", 100, UNSATISFIABLE),
        ("bytes=0-", 0, UNSATISFIABLE),
        ("bytes=0-0", 0, UNSATISFIABLE),
        ("bytes=-0", 0, UNSATISFIABLE),
        # empty file, suffix range: no bytes to describe, ignored
        ("bytes=-5", 0, None),
        # ignored: invalid syntax
        ("bytes=10-5", 100, None),  # last-pos before first-pos
        ("bytes=", 100, None),
        ("bytes=-", 100, None),
        ("bytes=--1", 100, None),
        ("bytes=1--2", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=0x10-", 100, None),
        ("bytes=+1-2", 100, None),
        ("bytes=1-+2", 100, None),
        ("bytes=1.0-2", 100, None),
        ("bytes=1-2-3", 100, None),
        ("bytes=1", 100, None),
        ("bytes 0-1", 100, None),
        ("bytes:0-1", 100, None),
        ("bytes==0-1", 100, None),
        ("=0-1", 100, None),
        ("0-1", 100, None),
        ("", 100, None),
        # ignored: other units
        ("items=0-1", 100, None),
        ("byte=0-1", 100, None),
        ("bytess=0-1", 100, None),
        ("none", 100, None),
        # ignored: whitespace anywhere
        (" bytes=0-1", 100, None),
        ("bytes=0-1 ", 100, None),
        ("bytes =0-1", 100, None),
        ("bytes= 0-1", 100, None),
        ("bytes=0 -1", 100, None),
        ("bytes=0- 1", 100, None),
        ("bytes=0-1\n", 100, None),
        ("bytes=\t0-1", 100, None),
        # ignored: several ranges (no multipart), even when one is fine
        ("bytes=0-1,2-3", 100, None),
        ("bytes=0-1, 2-3", 100, None),
        ("bytes=0-1,", 100, None),
        ("bytes=,0-1", 100, None),
        ("bytes=-1,-1", 100, None),
        ("bytes=" + ",".join(["0-"] * 1000), 100, None),
        # ignored: huge numbers and non-ASCII digits
        ("bytes=10000000000000000000-", 100, None),  # 20 digits
        ("bytes=0-10000000000000000000", 100, None),
        ("bytes=-10000000000000000000", 100, None),
        ("bytes=" + "9" * 5000 + "-", 100, None),
        ("bytes=\u0661-\u0662", 100, None),  # Arabic-Indic digits
        ("bytes=\uff11-\uff12", 100, None),  # full-width digits
        ("byte\u017f=0-1", 100, None),  # long s must not case-fold to "s"
        ("bytes=0-1\x00", 100, None),
    ],
)
def test_parse_range(value: str, size: int, expected: object) -> None:
    assert parse_range(value, size) == expected


def test_unsatisfiable_is_a_singleton_sentinel() -> None:
    assert isinstance(UNSATISFIABLE, Unsatisfiable)
    assert repr(UNSATISFIABLE) == "UNSATISFIABLE"
    assert parse_range("bytes=5-", 1) is UNSATISFIABLE
    with pytest.raises(AttributeError):
        UNSATISFIABLE.x = 1  # type: ignore[attr-defined]


def test_parse_range_never_raises() -> None:
    # Every short string over the grammar's alphabet, plus a few strangers.
    alphabet = "bytes=-0129, \t;\u0661"
    values = [""]
    for _ in range(3):
        values = [v + c for v in values for c in alphabet] + values
    for value in values:
        for size in (0, 1, 10):
            result = parse_range("bytes=" + value, size)
            if isinstance(result, tuple):
                first, last = result
                assert 0 <= first <= last < size
