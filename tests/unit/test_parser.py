"""The request corpus through ``RequestReader``, whole and cut at every kind of boundary.

Framing bugs hide at buffer boundaries, so every request of ``tests/data/requests`` is
fed whole, line by line, byte by byte and in seeded random splits, and must give the
same events (or the same error status) every time:

- ``valid/NAME.http`` with ``valid/NAME.json``: the requests it holds (method, target,
  version, header lines, body, keep-alive, framing) and, for the integration tests, the
  statuses portico answers;
- ``invalid/NAME.STATUS.http``: the status of the ``RemoteProtocolError`` it raises.

The corpus assumes ``large_client_header_buffers 4 1k`` (``long-uri``, ``many-headers``).

h11 is the reference for HTTP/1.1 framing: each valid request must read the same there,
each invalid one must be refused there too, except for the cases listed below with the
reason we differ. The lists are checked both ways: a case that stops differing fails.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from portico.errors import RemoteProtocolError
from portico.http.parser import END, KNOWN_HEAD_SIZE_MAX, RequestHead, RequestReader, known_heads

h11 = pytest.importorskip("h11")

CORPUS = Path(__file__).resolve().parent.parent / "data" / "requests"
LINE_SIZE, HEADER_COUNT = 1024, 4  # large_client_header_buffers 4 1k
SEEDS = range(8)

# Valid for us, refused or read otherwise by h11.
H11_READS_OTHERWISE = {
    "http12-as-http11": "RFC 9112 2.3: a higher minor version is processed as the highest "
    "we implement, so we report 1.1; h11 reports 1.2",
    "leading-empty-line": "RFC 9112 2.2: a server SHOULD ignore an empty line before the "
    "request line (old clients send one after a POST body); h11 refuses it",
    "request-line-double-space": "RFC 9112 3 lets a recipient split the request line on "
    "whitespace; httptools and nginx do, h11 insists on single spaces",
}

# Refused by us, accepted by h11.
H11_ACCEPTS = {
    "cl-and-te": "RFC 9112 6.3 lets Transfer-Encoding override Content-Length; both at once "
    "is the classic smuggling vector and nginx answers 400, so do we",
    "te-and-cl": "same as cl-and-te, other order",
    "cl-te-smuggle": "same as cl-and-te",
    "te-cl-smuggle": "same as cl-and-te",
    "cl-duplicate-equal": "two Content-Length lines, even equal: nginx 400; h11 folds equal values",
    "cl-duplicate-case": "as cl-duplicate-equal",
    "cl-list": "'5, 5' is allowed by RFC 9110 8.6 as a list of equal values; nginx refuses "
    "it and so do we (one number or nothing)",
    "obs-fold": "obs-fold is deprecated (RFC 9112 5.2) and a smuggling tool; we refuse it "
    "with 400, h11 unfolds it",
    "te-obs-fold": "as obs-fold, on the framing header",
    "cl-obs-fold": "as obs-fold, on the framing header",
    "bare-lf-headers": "we require CRLF; bare LF line ends are how front and back ends "
    "disagree on where a line stops (h11 accepts LF)",
    "bare-lf-end-of-head": "as bare-lf-headers",
    "request-line-bare-lf": "as bare-lf-headers",
    "last-chunk-bare-lf": "as bare-lf-headers, in a chunked body",
    "trailer-bare-lf": "as bare-lf-headers, in the trailer section",
    "trailer-content-length": "httptools applies the Content-Length + Transfer-Encoding "
    "rule to trailer fields too (400); h11 drops trailers unread. A framing field has no "
    "business in a trailer (RFC 9110 6.5.1), so refusing is fine",
    "te-chunked-trailing-tab": "httptools does not see 'chunked' when a tab (OWS) follows "
    "it and refuses the request; we answer 501 as for any coding we cannot frame. h11 "
    "and nginx strip the tab and read chunks (trailing spaces work: see valid/te-ows)",
    "header-value-ctl": "control characters in a value: refused (httptools' strict mode); "
    "h11 only refuses NUL, CR and LF",
    "header-value-del": "as header-value-ctl (DEL)",
    "method-unknown": "httptools knows a fixed list of methods; h11 (and nginx) take any "
    "token. An unknown method is answered 400 here, not 405/501",
    "method-lowercase": "as method-unknown; nginx refuses lowercase methods too",
    "http2": "HTTP/2.0 on an HTTP/1.1 connection: 505 (nginx); h11 does not check versions",
    "http3": "as http2",
    "http-0-5": "HTTP/0.x: refused; h11 does not check versions",
    "te-http10": "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty; "
    "nginx answers 400, h11 reads the chunks",
    "chunk-size-overflow": "a chunk size past 2^64 is refused at once; h11 waits for more",
    "chunk-size-2-pow-64": "as chunk-size-overflow",
    "chunk-size-trailing-space": "'5 ' is not chunk-size [chunk-ext]; h11 allows trailing "
    "whitespace",
    "chunk-ext-nul": "a NUL in a chunk extension: h11 skips extensions unread",
    "chunk-ext-empty": "';' without a name is not a chunk-ext; h11 skips extensions unread",
    "long-uri": "414 at large_client_header_buffers; h11's only limit is 16 KiB per head",
    "long-header-line": "431 at large_client_header_buffers; as long-uri",
    "many-headers": "431 at large_client_header_buffers; as long-uri",
    # the target and the Host are read where the head is (a request whose path or host
    # cannot be resolved is refused before anything acts on it); h11 only frames
    "options-asterisk": "server-wide OPTIONS names no resource: nginx answers 400, so do "
    "we; the framing is fine for h11",
    "host-slash": "nginx's Host rule (ngx_http_validate_host): no '/' in a host, since "
    "$host may end up in a file path; h11 does not read Host values",
    "host-empty-label": "as host-slash: no empty label ('..')",
    "target-above-root": "a '..' that climbs above '/' is a 400 (nginx); h11 does not read paths",
    "target-bad-escape": "'%zz' is not a percent-encoding (nginx 400); as target-above-root",
}

# Refused by both, with a different status.
H11_STATUS_DIFFERS = {
    "te-twice": "two Transfer-Encoding lines: 400 as a duplicate framing header (nginx), "
    "h11 says 501",
    "te-twice-identity": "as te-twice",
}


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int | None  # None: valid
    spec: dict[str, Any]


def load_corpus() -> list[Case]:
    cases = []
    for path in sorted((CORPUS / "valid").glob("*.http")):
        spec = json.loads(path.with_suffix(".json").read_text())
        cases.append(Case(path.stem, path.read_bytes(), None, spec))
    for path in sorted((CORPUS / "invalid").glob("*.http")):
        name, status = path.name.removesuffix(".http").rsplit(".", 1)
        cases.append(Case(name, path.read_bytes(), int(status), {}))
    return cases


CASES = load_corpus()
VALID = [c for c in CASES if c.status is None]
INVALID = [c for c in CASES if c.status is not None]


# -- ways to cut the bytes ---------------------------------------------------------


def whole(data: bytes) -> list[list[bytes]]:
    return [[data]]


def by_line(data: bytes) -> list[list[bytes]]:
    # after every LF, and also after every CR: a CRLF split in two is a boundary too
    return [
        [p for p in re.split(rb"(?<=\n)", data) if p],
        [p for p in re.split(rb"(?<=[\r\n])", data) if p],
    ]


def by_byte(data: bytes) -> list[list[bytes]]:
    return [[data[i : i + 1] for i in range(len(data))]]


def random_splits(data: bytes) -> list[list[bytes]]:
    out = []
    for seed in SEEDS:
        rng = random.Random(seed)
        pieces, i = [], 0
        while i < len(data):
            n = rng.randint(1, max(1, min(len(data) - i, rng.choice((3, 17, 64, 300)))))
            pieces.append(data[i : i + n])
            i += n
        out.append(pieces)
    return out


SPLITS = {"whole": whole, "lines": by_line, "bytes": by_byte, "random": random_splits}


# -- running the reader --------------------------------------------------------------


def head_record(head: RequestHead) -> dict[str, Any]:
    return {
        "method": head.method,
        "target": head.target.decode("latin-1"),
        "version": head.version,
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in head.raw_headers],
        "keep_alive": head.keep_alive,
        "content_length": head.content_length,
        "chunked": head.chunked,
    }


def read(pieces: list[bytes]) -> tuple[list[dict[str, Any]], int | None, bool]:
    """Requests read from ``pieces`` (body pieces joined), the error status if any, and
    whether the last request is complete."""
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    status = None
    try:
        for piece in pieces:
            reader.feed(piece)
            # as the connection does when no tunnel takes an Upgrade request
            while reader.paused:
                reader.resume()
    except RemoteProtocolError as e:
        status = e.status
    requests: list[dict[str, Any]] = []
    complete = True
    for event in reader.events:
        if isinstance(event, RequestHead):
            requests.append(head_record(event) | {"body": ""})
            complete = False
        elif event is END:
            complete = True
        else:
            assert isinstance(event, bytes) and event, f"empty or odd body event {event!r}"
            assert not complete, "body bytes outside a request"
            requests[-1]["body"] += event.decode("latin-1")
    return requests, status, complete


def cases_by_split(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, split, id=f"{c.name}-{split}") for c in cases for split in SPLITS]


@pytest.mark.parametrize(("case", "split"), cases_by_split(VALID))
def test_valid_request_reads_the_same_however_split(case: Case, split: str) -> None:
    expected = case.spec["requests"]
    for number, pieces in enumerate(SPLITS[split](case.data)):
        requests, status, complete = read(pieces)
        where = f"{case.name}, split {split} #{number} ({len(pieces)} pieces)"
        assert status is None, f"{where}: refused with {status}"
        assert complete, f"{where}: the last request did not end"
        assert requests == expected, where


@pytest.mark.parametrize(("case", "split"), cases_by_split(INVALID))
def test_invalid_request_is_refused_the_same_however_split(case: Case, split: str) -> None:
    for number, pieces in enumerate(SPLITS[split](case.data)):
        requests, status, _ = read(pieces)
        where = f"{case.name}, split {split} #{number} ({len(pieces)} pieces)"
        assert status == case.status, f"{where}: {status} (read {requests})"
        # the error is in the file's first request: nothing of it is left to act on
        assert requests == [], where


def test_corpus_is_there_and_named_right() -> None:
    assert len(VALID) >= 30 and len(INVALID) >= 60
    for path in (CORPUS / "invalid").iterdir():
        assert re.fullmatch(r"[a-z0-9-]+\.(400|413|414|431|501|505)\.http", path.name), path
    for path in (CORPUS / "valid").iterdir():
        assert path.suffix in (".http", ".json"), path
        assert path.with_suffix(".http").exists() and path.with_suffix(".json").exists(), path
    # CRLF line ends survived (nobody saved a file with an editor that "fixed" them)
    assert b"\r\n" in (CORPUS / "valid" / "get-simple.http").read_bytes()


def test_repeated_fields_are_joined_for_lookups() -> None:
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    reader.feed((CORPUS / "valid" / "headers-repeated.http").read_bytes())
    head = reader.events[0]
    assert isinstance(head, RequestHead)
    assert head.headers["accept"] == "text/html, text/plain"
    assert head.headers["cookie"] == "a=1; b=2"


def test_an_unfinished_head_cannot_grow_without_bound() -> None:
    # a header line that never ends, in small reads: httptools buffers it out of our
    # sight, so the raw bytes are what bounds it
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    reader.feed(b"GET /ok HTTP/1.1\r\nHost: example.com\r\nX-Endless: ")
    fed = 0
    with pytest.raises(RemoteProtocolError) as error:
        while fed < 100_000:
            reader.feed(b"v" * 100)
            fed += 100
    assert error.value.status == 431
    assert fed <= LINE_SIZE * (HEADER_COUNT + 2)


def test_head_limit_is_exact_whatever_the_reads() -> None:
    # the largest head the limit allows, then one byte more: the same answer in one read
    # and in many (the size is counted from the parsed lines, not from the reads)
    def request(pad: int) -> bytes:
        lines = [b"GET /ok HTTP/1.1", b"Host: example.com"]
        lines += [b"X-Pad-%d: %s" % (i, b"p" * 1000) for i in range(5)]
        lines.append(b"X-Last: " + b"q" * pad)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    limit = LINE_SIZE * HEADER_COUNT + LINE_SIZE  # 4 buffers, and one for the request line
    fits = next(p for p in range(100, -1, -1) if len(request(p)) <= limit)
    assert len(request(fits)) == limit
    for data, refused in ((request(fits), False), (request(fits + 1), True)):
        outcomes = set()
        for pieces in whole(data) + by_byte(data) + random_splits(data):
            outcomes.add(read(pieces)[1])
        assert outcomes == ({431} if refused else {None}), (len(data), outcomes)


def test_the_whole_request_line_must_fit_in_a_buffer() -> None:
    # method, two spaces, "HTTP/1.1" and CRLF count, whatever the reads
    def request(method: bytes, line: int) -> bytes:
        target = b"/" + b"t" * (line - len(method) - 13)
        data = b"%s %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % (method, target)
        assert data.index(b"\r\n") + 2 == line
        return data

    for method in (b"GET", b"OPTIONS"):
        for line, refused in ((LINE_SIZE, False), (LINE_SIZE + 1, True)):
            data = request(method, line)
            outcomes = {read(pieces)[1] for pieces in whole(data) + by_byte(data)}
            assert outcomes == ({414} if refused else {None}), (method, line, outcomes)


@pytest.mark.parametrize("underscores", [False, True])
def test_a_header_name_with_an_underscore_is_dropped_unless_allowed(underscores: bool) -> None:
    reader = RequestReader(LINE_SIZE, HEADER_COUNT, underscores)
    reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX_User: admin\r\nX-User: real\r\n\r\n")
    head = reader.events[0]
    assert isinstance(head, RequestHead)
    if underscores:
        assert head.headers == {"host": "x", "x_user": "admin", "x-user": "real"}
    else:
        assert head.headers == {"host": "x", "x-user": "real"}
        assert [name for name, _ in head.raw_headers] == [b"Host", b"X-User"]


def test_upgrade_pauses_and_holds_what_follows() -> None:
    data = (CORPUS / "valid" / "pipelined-after-upgrade.http").read_bytes()
    second = data[data.index(b"\r\n\r\n") + 4 :]
    # a tunnel takes the bytes that followed the head, unparsed
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    reader.feed(data[:-3])
    reader.feed(data[-3:])
    assert reader.paused
    assert [type(e).__name__ for e in reader.events] == ["RequestHead", "_End"]
    assert reader.take_held() == second
    # nobody took the Upgrade: what followed is parsed as HTTP after all
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    reader.feed(data)
    reader.resume()
    assert not reader.paused
    assert [type(e).__name__ for e in reader.events] == ["RequestHead", "_End"] * 2


# -- whole requests remembered ------------------------------------------------------------

GET = b"GET /a//b?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n"


def fresh_table(merge_slashes: bool = True) -> dict[bytes, RequestHead]:
    table = known_heads((LINE_SIZE, HEADER_COUNT, False, merge_slashes))
    table.clear()
    return table


def test_a_whole_request_read_at_once_is_remembered_with_its_meaning() -> None:
    table = fresh_table()
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    reader.feed(GET)
    head = reader.events[0]
    assert table == {GET: head}
    assert isinstance(head, RequestHead)
    assert head.shared
    assert (head.path, head.query, head.host) == ("/a/b", "x=1", "example.com")
    # another reader with the same settings shares the table; other settings do not
    assert RequestReader(LINE_SIZE, HEADER_COUNT)._known is table
    kept = fresh_table(merge_slashes=False)
    RequestReader(LINE_SIZE, HEADER_COUNT, merge_slashes=False).feed(GET)
    assert kept[GET].path == "/a//b"


@pytest.mark.parametrize(
    "reads",
    [
        # a body follows the head: the next read of these bytes is not the same request
        [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"],
        [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
        # what follows an Upgrade head is not HTTP
        [b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"],
        # two requests, or one and the start of the next
        [GET + GET],
        [GET + b"GET / HT"],
        # the end of a head begun in an earlier read
        [GET[:20], GET[20:]],
        # the end of a body, then a whole request
        [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\na", b"b" + GET],
        # too long to keep
        [GET[:-2] + b"X-Pad: %b\r\n" % (b"p" * 900) * (KNOWN_HEAD_SIZE_MAX // 900 + 1) + b"\r\n"],
    ],
    ids=["body", "chunked", "upgrade", "two", "one-and-a-start", "split", "body-end", "long"],
)
def test_only_a_read_of_exactly_one_bodiless_request_is_remembered(reads: list[bytes]) -> None:
    table = fresh_table()
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    for data in reads:
        reader.feed(data)
    head = reader.events[0]
    assert isinstance(head, RequestHead)
    assert table == {}
    assert not head.shared


def test_the_rest_of_a_body_is_not_taken_for_a_request() -> None:
    table = fresh_table()
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    reader.events.clear()  # the connection took the head
    reader.feed(b"hello world")
    assert list(reader.events) == [b"hello world", END]
    assert table == {}


def test_a_read_behind_a_pending_request_is_not_remembered() -> None:
    table = fresh_table()
    reader = RequestReader(LINE_SIZE, HEADER_COUNT)
    reader.feed(GET)
    table.clear()
    reader.feed(GET)  # the first request's events were not taken yet
    assert table == {}
    assert len(reader.events) == 4


# -- the reference: h11 ------------------------------------------------------------------


def h11_read(data: bytes) -> tuple[list[dict[str, Any]], int | None]:
    """What h11, as a server answering 200 to everything, reads from ``data``."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    requests: list[dict[str, Any]] = []
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:
                # answer, so that h11 reads the next pipelined request
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # MUST_CLOSE: no next request
                conn.start_next_cycle()
            elif isinstance(event, h11.Request):
                requests.append(
                    {
                        "method": event.method.decode("latin-1"),
                        "target": event.target.decode("latin-1"),
                        "version": event.http_version.decode("latin-1"),
                        "headers": [
                            [n.decode("latin-1"), v.decode("latin-1")] for n, v in event.headers
                        ],
                        "body": "",
                    }
                )
            elif isinstance(event, h11.Data):
                requests[-1]["body"] += bytes(event.data).decode("latin-1")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                pass
    except h11.RemoteProtocolError as e:
        return requests, e.error_status_hint
    return requests, None


def comparable(request: dict[str, Any]) -> dict[str, Any]:
    # h11 lowercases field names, and the value of Transfer-Encoding; the rest must match
    def field(name: str, value: str) -> list[str]:
        name = name.lower()
        return [name, value.lower() if name == "transfer-encoding" else value]

    return {
        "method": request["method"],
        "target": request["target"],
        "version": request["version"],
        "headers": [field(n, v) for n, v in request["headers"]],
        "body": request["body"],
    }


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_request_reads_as_in_h11(case: Case) -> None:
    ours = [comparable(r) for r in case.spec["requests"]]
    theirs, status = h11_read(case.data)
    same = status is None and [comparable(r) for r in theirs] == ours
    if case.name in H11_READS_OTHERWISE:
        assert not same, f"{case.name} now reads the same in h11: drop it from the list"
    else:
        assert status is None, f"h11 refuses {case.name} with {status}"
        assert [comparable(r) for r in theirs] == ours


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_invalid_request_is_refused_by_h11_too(case: Case) -> None:
    _, status = h11_read(case.data)
    if case.name in H11_ACCEPTS:
        assert status is None, f"h11 now refuses {case.name} ({status}): drop it from the list"
    elif case.name in H11_STATUS_DIFFERS:
        assert status is not None and status != case.status, case.name
    else:
        assert status == case.status, f"h11 answers {status} to {case.name}"


def test_difference_lists_name_corpus_files() -> None:
    names = {c.name for c in CASES}
    for listed in (H11_READS_OTHERWISE, H11_ACCEPTS, H11_STATUS_DIFFERS):
        assert set(listed) <= names, set(listed) - names
