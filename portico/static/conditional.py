"""Validators, conditional requests and byte ranges for static files (RFC 9110 §8.8, §13, §14).

Theory of operation
-------------------
A file has two validators: its modification time (sent as ``Last-Modified``,
whole seconds) and a strong entity tag built from mtime and size the way nginx
builds it (:func:`make_etag`). The static handler, having stat()ed the file,
asks three questions, in this order:

1. :func:`evaluate_preconditions`: do If-Match / If-Unmodified-Since /
   If-None-Match / If-Modified-Since stop the request (412 or 304)?
2. :func:`if_range_allows`: if a Range header came with an If-Range, is the
   client's copy still current, so that a partial answer makes sense?
3. :func:`parse_range`: which single byte range is asked for: a ``(first,
   last)`` pair, ``None`` (ignore the header, send the whole file with 200) or
   :data:`UNSATISFIABLE` (416 with ``Content-Range: bytes */size``).

All of it is pure: header values in, a decision out. Header values are ``str``
(as decoded by the HTTP layer, latin-1 for obs-text); malformed input never
raises, it is ignored or fails the condition, as each function documents.
"""

from __future__ import annotations

import datetime
import re
from typing import Final, final

__all__ = [
    "EPOCH",
    "MONTHS",
    "UNSATISFIABLE",
    "Unsatisfiable",
    "evaluate_preconditions",
    "http_date",
    "if_range_allows",
    "make_etag",
    "parse_http_date",
    "parse_range",
]

# --------------------------------------------------------------------------
# Dates (RFC 9110 §5.6.7)
#
#   HTTP-date    = IMF-fixdate / obs-date
#   IMF-fixdate  = day-name "," SP date1 SP time-of-day SP GMT
#                ; fixed length/zone/capitalization subset of RFC 5322
#   day-name     = %s"Mon" / %s"Tue" / %s"Wed" / %s"Thu" / %s"Fri" / %s"Sat" / %s"Sun"
#   date1        = day SP month SP year      ; e.g., 02 Jun 1982
#   day          = 2DIGIT
#   month        = %s"Jan" / %s"Feb" / ... / %s"Dec"
#   year         = 4DIGIT
#   GMT          = %s"GMT"
#   time-of-day  = hour ":" minute ":" second
#   hour = 2DIGIT; minute = 2DIGIT; second = 2DIGIT
#
#   obs-date     = rfc850-date / asctime-date
#   rfc850-date  = day-name-l "," SP date2 SP time-of-day SP GMT
#   date2        = day "-" month "-" 2DIGIT  ; e.g., 02-Jun-82
#   day-name-l   = %s"Monday" / ... / %s"Sunday"
#   asctime-date = day-name SP date3 SP time-of-day SP year
#   date3        = month SP ( 2DIGIT / ( SP DIGIT ))  ; e.g., Jun  2
#
# The grammar is case-sensitive (%s). The day name is checked for spelling
# but not against the date: RFC 9110 does not ask for it, and nobody gains
# from rejecting a client whose calendar is off by a weekday.
# --------------------------------------------------------------------------

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
_MONTH_NUMBER: Final = {name: i + 1 for i, name in enumerate(MONTHS)}

_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_L = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = "(?P<m>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = "(?P<H>[0-9]{2}):(?P<M>[0-9]{2}):(?P<S>[0-9]{2})"
# Named groups: d(ay), m(onth), y(ear), H, M, S; asctime puts the year last.
_IMF_FIXDATE = re.compile(rf"{_DAY}, (?P<d>[0-9]{{2}}) {_MONTH} (?P<y>[0-9]{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_DAY_L}, (?P<d>[0-9]{{2}})-{_MONTH}-(?P<y>[0-9]{{2}}) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} (?P<d>[0-9]{{2}}| [0-9]) {_TIME} (?P<y>[0-9]{{4}})")

EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_ORDINAL: Final = EPOCH.toordinal()


def http_date(ts: float) -> str:
    """Format a Unix timestamp as an IMF-fixdate: ``Sun, 06 Nov 1994 08:49:37 GMT``.

    Fractions of a second are dropped (floor), as ``Last-Modified`` compares
    in whole seconds. Names are English whatever the locale (no strftime).
    """
    t = EPOCH + datetime.timedelta(seconds=int(ts // 1))
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"
    )


def parse_http_date(value: str) -> float | None:
    """Parse an HTTP-date in any of its three forms; ``None`` if it is not one.

    RFC 850's two-digit years are read as 1970-2069. RFC 9110 asks for "more
    than 50 years in the future means the past century", which needs a clock;
    the fixed pivot keeps this pure, and the two rules disagree only on
    two-digit years decades away from now, which no client sends.
    """
    m = _IMF_FIXDATE.fullmatch(value) or _ASCTIME.fullmatch(value)
    if m is not None:
        year = int(m["y"])
    else:
        m = _RFC850.fullmatch(value)
        if m is None:
            return None
        year = int(m["y"])
        year += 2000 if year < 70 else 1900
    hour, minute, second = int(m["H"]), int(m["M"]), int(m["S"])
    # second = 60 is a leap second (RFC 5322 allows it); it counts as the next
    # second's first instant, as POSIX time does.
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        day = datetime.date(year, _MONTH_NUMBER[m["m"]], int(m["d"]))
    except ValueError:  # 31 Feb, day 00, year 0000
        return None
    days = day.toordinal() - _EPOCH_ORDINAL
    return float(days * 86400 + hour * 3600 + minute * 60 + second)


# --------------------------------------------------------------------------
# Entity tags (RFC 9110 §8.8.3)
#
#   entity-tag = [ weak ] opaque-tag
#   weak       = %s"W/"
#   opaque-tag = DQUOTE *etagc DQUOTE
#   etagc      = %x21 / %x23-7E / obs-text
#              ; VCHAR except double quotes, plus obs-text
#
#   If-Match      = "*" / #entity-tag
#   If-None-Match = "*" / #entity-tag
#
# A list element may be empty and elements are separated by OWS "," OWS
# (RFC 9110 §5.6.1). etagc includes ",", so a list cannot be split on commas:
# it is scanned tag by tag.
# --------------------------------------------------------------------------

_ENTITY_TAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')
_OWS = " \t"


def make_etag(mtime: float, size: int) -> str:
    """nginx's strong entity tag: ``"<hex mtime>-<hex size>"``, e.g. ``"5f3c1a2b-400"``.

    Same bytes as nginx for the same file, so a cache or CDN warmed by nginx
    keeps validating against portico.
    """
    return f'"{int(mtime):x}-{size:x}"'


def _parse_etag_list(value: str) -> list[str] | None:
    """The entity-tags of a ``#entity-tag`` list, or None if it is malformed."""
    tags: list[str] = []
    pos, end = 0, len(value)
    while True:
        while pos < end and (value[pos] in _OWS or value[pos] == ","):
            pos += 1
        if pos == end:
            return tags
        m = _ENTITY_TAG.match(value, pos)
        if m is None:
            return None
        tags.append(m.group())
        pos = m.end()
        while pos < end and value[pos] in _OWS:
            pos += 1
        if pos < end and value[pos] != ",":
            return None


def _strong_match(a: str, b: str) -> bool:
    # Strong comparison (RFC 9110 §8.8.3.2): both strong, same opaque-tag.
    return a == b and not a.startswith("W/")


def _weak_match(a: str, b: str) -> bool:
    # Weak comparison: same opaque-tag, whatever the W/ prefixes.
    return a.removeprefix("W/") == b.removeprefix("W/")


def _if_match_passes(value: str, etag: str) -> bool:
    # "*" matches any current representation, and a file we have stat()ed has
    # one. A malformed list confirms nothing, so the condition is false.
    if value == "*":
        return True
    tags = _parse_etag_list(value)
    return tags is not None and any(_strong_match(tag, etag) for tag in tags)


def _if_none_match_passes(value: str, etag: str) -> bool:
    # The condition is true when no tag matches. A malformed list matches
    # nothing, so the request goes on: the full answer is always safe.
    if value == "*":
        return False
    tags = _parse_etag_list(value)
    return tags is None or not any(_weak_match(tag, etag) for tag in tags)


_IMS_MODES: Final = frozenset({"off", "exact", "before"})


def evaluate_preconditions(
    method: str,
    if_match: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_unmodified_since: str | None,
    etag: str,
    mtime: float,
    ims_mode: str = "exact",
) -> int | None:
    """Evaluate the preconditions of a request for a file: 412, 304 or None (go on).

    RFC 9110 §13.2.2 order:

    1. If-Match present: false (no strong match; ``*`` matches) -> 412.
       Otherwise If-Unmodified-Since present and valid: mtime after it -> 412.
    2. If-None-Match present: false (a weak match, or ``*``) -> 304 for
       GET/HEAD, 412 for any other method.
       Otherwise, for GET/HEAD only, If-Modified-Since valid and not modified
       -> 304, as ``ims_mode`` (nginx's ``if_modified_since``) defines it:
       ``"off"`` ignores it, ``"exact"`` (nginx's default) needs the date to
       equal the mtime in whole seconds, ``"before"`` needs mtime <= date.

    Dates compare in whole seconds, the resolution of ``Last-Modified``. An
    unparsable date is ignored (RFC 9110 §13.1.3, §13.1.4); a malformed
    If-Match fails and a malformed If-None-Match passes (see the helpers). A
    header whose value is empty after trimming counts as absent.
    ``method`` is case-sensitive, as HTTP methods are.
    """
    if ims_mode not in _IMS_MODES:
        raise ValueError(f"ims_mode must be 'off', 'exact' or 'before', not {ims_mode!r}")
    modified = int(mtime // 1)

    if_match = _present(if_match)
    if if_match is not None:
        if not _if_match_passes(if_match, etag):
            return 412
    else:
        if_unmodified_since = _present(if_unmodified_since)
        if if_unmodified_since is not None:
            date = parse_http_date(if_unmodified_since)
            if date is not None and modified > date:
                return 412

    safe = method in ("GET", "HEAD")
    if_none_match = _present(if_none_match)
    if if_none_match is not None:
        if not _if_none_match_passes(if_none_match, etag):
            return 304 if safe else 412
    elif safe and ims_mode != "off":
        if_modified_since = _present(if_modified_since)
        if if_modified_since is not None:
            date = parse_http_date(if_modified_since)
            if date is not None and (modified == date if ims_mode == "exact" else modified <= date):
                return 304
    return None


def _present(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(_OWS)
    return value or None


def if_range_allows(if_range: str | None, etag: str, mtime: float) -> bool:
    """May a Range be honoured, given If-Range? True if absent (RFC 9110 §13.1.5).

    ::

        If-Range = entity-tag / HTTP-date

    An entity tag must match strongly, so a weak tag never does. A date must
    equal the mtime in whole seconds (a date is a weak validator unless exactly
    the one we sent). Anything else, malformed included, is False: the caller
    then ignores the Range and sends the whole file, which is always correct.

    RFC 9110 also says a date is only strong if ``Last-Modified`` was at least
    a second before the response's ``Date``; checking that needs the clock,
    and ``make_etag`` tags are what browsers send back, so it is not checked.
    """
    if if_range is None:
        return True
    value = if_range.strip(_OWS)
    if value.startswith('"'):
        return _ENTITY_TAG.fullmatch(value) is not None and _strong_match(value, etag)
    if value.startswith("W/"):
        return False
    date = parse_http_date(value)
    return date is not None and date == int(mtime // 1)


# --------------------------------------------------------------------------
# Ranges (RFC 9110 §14.1, §14.2)
#
#   Range            = ranges-specifier
#   ranges-specifier = range-unit "=" range-set
#   range-unit       = token                  ; compared case-insensitively
#   range-set        = 1#range-spec
#   range-spec       = int-range / suffix-range / other-range
#   int-range        = first-pos "-" [ last-pos ]
#   first-pos        = 1*DIGIT
#   last-pos         = 1*DIGIT
#   suffix-range     = "-" suffix-length
#   suffix-length    = 1*DIGIT
#
# Only one range-spec of unit "bytes" is honoured. Multiple ranges would need
# a multipart/byteranges body; ignoring the header instead (and sending the
# whole file with 200) is explicitly allowed (RFC 9110 §14.2: "A server MAY
# ignore the Range header field") and it shuts the door on the many-ranges
# amplification trick. No whitespace is allowed anywhere, and numbers are at
# most 19 digits (they fit a signed 64-bit off_t, which other hops use).
# --------------------------------------------------------------------------


@final
class Unsatisfiable:
    """Type of :data:`UNSATISFIABLE`: the range asks only for bytes past the end."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE: Final = Unsatisfiable()

# re.ASCII keeps digits to [0-9] and stops IGNORECASE folding U+017F (long s)
# into "s".
_BYTE_RANGE = re.compile(r"bytes=(?:([0-9]{1,19})-([0-9]{0,19})|-([0-9]{1,19}))", re.I | re.A)


def parse_range(value: str, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """Interpret ``Range: bytes=...`` for a representation of ``size`` bytes.

    Returns ``(first, last)``, inclusive, with ``last`` clipped to
    ``size - 1``; ``None`` when the header is to be ignored (invalid syntax,
    another unit, last-pos before first-pos, several ranges: serve 200 with
    the whole file); or :data:`UNSATISFIABLE` when the range starts at or past
    the end, or is ``-0`` (answer 416 with ``Content-Range: bytes */size``).

    On an empty file a suffix range (``-5``) is satisfiable by the RFC but has
    no byte to send and no ``Content-Range`` that could describe it, so it is
    ignored (None, a 200 with an empty body); ``0-`` is unsatisfiable.
    Never raises.
    """
    m = _BYTE_RANGE.fullmatch(value)
    if m is None:
        return None
    first_pos, last_pos, suffix_length = m.groups()
    if suffix_length is not None:
        n = int(suffix_length)
        if n == 0:
            return UNSATISFIABLE
        if size <= 0:
            return None
        return max(0, size - n), size - 1
    first = int(first_pos)
    if not last_pos:
        return (first, size - 1) if first < size else UNSATISFIABLE
    last = int(last_pos)
    if last < first:
        return None  # RFC 9110 §14.1.1: an invalid int-range; ignore the header
    if first >= size:
        return UNSATISFIABLE
    return first, min(last, size - 1)
