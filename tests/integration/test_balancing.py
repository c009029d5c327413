"""Load balancing and peer failures through a real portico: who gets the requests.

Backends are ``tests.backends`` servers: in this process where a test counts what each
one saw, as processes of their own where a test kills one. Every portico here has one
worker, since each worker balances on its own (as nginx does without a shared zone).
The balancing rules themselves are tested exhaustively in tests/unit/test_balancers.py;
these tests check that the running server applies them.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.backends import Backend, BackendProcess, spawn
from tests.conftest import Portico, free_port

TIMEOUT = 5.0


@pytest.fixture
def processes() -> Iterator[Callable[..., BackendProcess]]:
    """Backends as processes of their own (killed at the end of the test)."""
    started: list[BackendProcess] = []

    def start(name: str, port: int = 0) -> BackendProcess:
        backend = spawn(name, port)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


class Client:
    """One keep-alive client connection (reopened when portico closes it)."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=TIMEOUT, source_address=(source, 0) if source else None
        )

    def get(
        self, path: str, method: str = "GET", body: bytes | None = None
    ) -> tuple[int, str | None, bytes]:
        """Status, the X-Backend that answered (None for portico's own), body."""
        self.conn.request(method, path, body=body)
        response = self.conn.getresponse()
        return response.status, response.getheader("X-Backend"), response.read()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def who(port: int, paths: list[str], source: str | None = None) -> Counter[str]:
    """Send GETs in order on one connection; count the backends that answered."""
    counts: Counter[str] = Counter()
    with Client(port, source) as client:
        for path in paths:
            status, backend, _ = client.get(path)
            assert status == 200, (path, status)
            assert backend is not None
            counts[backend] += 1
    return counts


def error_log(server: Portico) -> str:
    path = server.directory / "error.log"
    return path.read_text(errors="replace") if path.exists() else ""


def config(upstreams: str, locations: str) -> str:
    """A one-worker portico config with these upstream blocks and locations (still a
    template for the ``portico`` fixture: ``{port}``, ``{a}``... and ``{{ }}``)."""
    return f"""
worker_processes 1;
error_log {{dir}}/error.log info;
events {{{{ }}}}
http {{{{
    {upstreams}
    server {{{{
        listen 127.0.0.1:{{port}};
        proxy_connect_timeout 1s;
        proxy_read_timeout 2s;
        {locations}
    }}}}
}}}}
"""


# -- how requests are shared -------------------------------------------------------------


def test_weights_share_requests_by_round_robin(portico, backends) -> None:
    a, b, c = backends("a"), backends("b"), backends("c")
    server = portico(
        config(
            "upstream app {{ server {a} weight=3; server {b}; server {c}; keepalive 8; }}",
            "location / {{ proxy_pass http://app; }}",
        ),
        a=a.address,
        b=b.address,
        c=c.address,
    )
    counts = who(server.port, [f"/{i}" for i in range(1000)])
    assert sum(counts.values()) == 1000
    assert abs(counts["a"] - 600) <= 30, counts
    assert abs(counts["b"] - 200) <= 30, counts
    assert abs(counts["c"] - 200) <= 30, counts
    # the backends agree with what the client saw
    assert (a.stats.requests, b.stats.requests, c.stats.requests) == (
        counts["a"],
        counts["b"],
        counts["c"],
    )


def test_backup_serves_only_when_the_primaries_are_out_and_down_never(portico, backends) -> None:
    a, b, c, d = backends("a"), backends("b"), backends("c"), backends("d")
    server = portico(
        config(
            "upstream app {{ server {a}; server {b} down; server {c} backup; "
            "server {d} backup down; }}",
            "location / {{ proxy_pass http://app; }}",
        ),
        a=a.address,
        b=b.address,
        c=c.address,
        d=d.address,
    )
    assert who(server.port, [f"/{i}" for i in range(20)]) == {"a": 20}
    a.stop()  # the only usable primary goes away
    assert who(server.port, [f"/{i}" for i in range(20)]) == {"c": 20}
    assert b.stats.requests == d.stats.requests == 0


def test_ip_hash_keeps_each_client_on_one_peer(portico, backends) -> None:
    peers = [backends(name) for name in "abc"]
    server = portico(
        config(
            "upstream app {{ ip_hash; server {a}; server {b}; server {c}; }}",
            "location / {{ proxy_pass http://app; }}",
        ),
        **{p.name: p.address for p in peers},
    )
    # each client, from its own loopback address, always reaches the same peer
    owners = {}
    for source in ("127.1.2.3", "127.4.5.6", "127.7.8.9", "127.10.11.12", "127.13.14.15"):
        counts = who(server.port, [f"/{source}/{i}" for i in range(15)], source=source)
        assert len(counts) == 1, (source, counts)
        owners[source] = next(iter(counts))
    # the hash covers the /24: another host of the same network goes to the same peer
    for other, first in (("127.1.2.200", "127.1.2.3"), ("127.4.5.1", "127.4.5.6")):
        assert who(server.port, ["/x", "/y"], source=other) == {owners[first]: 2}
    # and different networks spread over the peers
    rng = random.Random(7)
    spread: Counter[str] = Counter()
    for _ in range(24):
        source = f"127.{rng.randrange(256)}.{rng.randrange(256)}.1"
        spread += who(server.port, ["/"], source=source)
    assert set(spread) == {"a", "b", "c"}, spread


def test_consistent_hash_moves_only_the_removed_peer_s_keys(portico, backends) -> None:
    peers = [backends(name) for name in "abcd"]
    addresses = {p.name: p.address for p in peers}
    four = portico(
        config(
            "upstream app {{ hash $request_uri consistent; "
            "server {a}; server {b}; server {c}; server {d}; keepalive 8; }}",
            "location / {{ proxy_pass http://app; }}",
        ),
        **addresses,
    )
    three = portico(
        config(
            "upstream app {{ hash $request_uri consistent; "
            "server {a}; server {b}; server {c}; keepalive 8; }}",
            "location / {{ proxy_pass http://app; }}",
        ),
        **addresses,
    )
    uris = [f"/item/{i}?v={i * 31 % 97}" for i in range(1000)]

    def owners(server: Portico) -> dict[str, str]:
        result = {}
        with Client(server.port) as client:
            for uri in uris:
                status, backend, _ = client.get(uri)
                assert status == 200 and backend is not None
                result[uri] = backend
        return result

    before, after = owners(four), owners(three)
    assert set(Counter(before.values())) == {"a", "b", "c", "d"}
    moved = [uri for uri in uris if before[uri] != after[uri]]
    assert len(moved) <= 1.5 * len(uris) / 4
    assert {before[uri] for uri in moved} == {"d"}  # only the removed peer's keys move
    assert len(moved) == sum(1 for uri in uris if before[uri] == "d")
    # and the same key always finds the same peer
    assert owners(three) == after


def test_fair_sends_less_to_a_slower_peer(portico, backends) -> None:
    fast, slow = backends("fast"), backends("slow", delay=0.02)
    server = portico(
        config(
            "upstream app {{ fair; server {fast}; server {slow}; keepalive 4; }}",
            "location / {{ proxy_pass http://app; }}",
        ),
        fast=fast.address,
        slow=slow.address,
    )
    counts = who(server.port, [f"/{i}" for i in range(400)])
    assert counts["slow"] <= 100, counts
    assert counts["slow"] >= 1  # it was tried


def hold_busy(port: int, path: str) -> threading.Thread:
    """A slow request on its own connection, in a thread."""
    results: list[object] = []

    def run() -> None:
        try:
            with Client(port) as client:
                results.append(client.get(path)[0])
        except Exception as e:  # reported by the caller's assertions
            results.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.results = results  # type: ignore[attr-defined]
    thread.start()
    return thread


def busy_backend(peers: list[Backend]) -> Backend:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        busy = [p for p in peers if p.stats.active > 0]
        if busy:
            assert len(busy) == 1
            return busy[0]
        time.sleep(0.01)
    raise AssertionError("the slow request reached no backend")


@pytest.mark.parametrize("method", ["least_conn", "random two"])
def test_the_busy_peer_is_avoided(portico, backends, method: str) -> None:
    peers = [backends(name) for name in "abc"]
    server = portico(
        config(
            f"upstream app {{{{ {method}; server {{a}}; server {{b}}; server {{c}}; }}}}",
            "location / {{ proxy_pass http://app; }}",
        ),
        **{p.name: p.address for p in peers},
    )
    holder = hold_busy(server.port, "/slow?ms=1000")
    busy = busy_backend(peers)
    counts = who(server.port, [f"/{i}" for i in range(30)])
    assert busy.name not in counts, counts
    assert len(counts) == 2  # both idle peers share the rest
    holder.join(5)
    assert holder.results == [200]  # type: ignore[attr-defined]


def test_random_spreads_by_weight(portico, backends) -> None:
    peers = [backends(name) for name in "abc"]
    server = portico(
        config(
            "upstream app {{ random two; server {a} weight=2; server {b}; server {c}; "
            "keepalive 4; }}",
            "location / {{ proxy_pass http://app; }}",
        ),
        **{p.name: p.address for p in peers},
    )
    counts = who(server.port, [f"/{i}" for i in range(400)])
    # weights 2:1:1 for the first draw; sequential requests always tie on load
    assert 150 <= counts["a"] <= 250, counts
    assert counts["b"] >= 60 and counts["c"] >= 60, counts


# -- failures ----------------------------------------------------------------------------

FAILOVER = """
upstream app {{
    server {a} max_fails=1 fail_timeout=1s;
    server {b} max_fails=1 fail_timeout=1s;
    keepalive 4;
}}
"""


def test_killing_a_peer_under_load_fails_no_request(portico, processes) -> None:
    a, b = processes("a"), processes("b")
    server = portico(
        config(FAILOVER, "location / {{ proxy_pass http://app; }}"),
        a=a.address,
        b=b.address,
    )
    killer = threading.Timer(0.3, a.stop)
    failures = []
    counts: Counter[str | None] = Counter()
    with Client(server.port) as client:
        started = time.monotonic()
        killer.start()
        try:
            for i in range(1000):
                if i >= 200 and time.monotonic() - started > 1.0:
                    break
                status, backend, _ = client.get(f"/{i}")
                counts[backend] += 1
                if status != 200:
                    failures.append((i, status))
        finally:
            killer.join(5)
    assert a.process.poll() is not None  # the kill happened during the run
    assert failures == []
    assert counts["a"] > 0 and counts["b"] > 0
    # the peer comes back on its port: after fail_timeout it gets requests again
    returned = processes("a", port=a.port)
    time.sleep(1.2)
    counts = who(server.port, [f"/again/{i}" for i in range(20)])
    assert counts["a"] >= 5, counts
    assert returned.stats()["requests"] >= 5


def test_all_peers_refusing_gives_a_fast_502_then_no_live_upstreams(portico) -> None:
    dead1, dead2 = free_port(), free_port()
    server = portico(
        config(
            "upstream app {{ server 127.0.0.1:{dead1}; server 127.0.0.1:{dead2}; }}",
            "location / {{ proxy_pass http://app; }} "
            "location /direct/ {{ proxy_pass http://127.0.0.1:{dead1}; }}",
        ),
        dead1=dead1,
        dead2=dead2,
    )
    with Client(server.port) as client:
        started = time.monotonic()
        status, backend, body = client.get("/first")
        assert time.monotonic() - started < 0.9  # refused, not the 1 s connect timeout
        assert (status, backend) == (502, None)
        assert b"<h1>502 Bad Gateway</h1>" in body
        log = error_log(server)
        for dead in (dead1, dead2):
            assert re.search(
                r"connect\(\) failed \(111: Connection refused\) while connecting to upstream"
                rf'.*upstream: "http://127\.0\.0\.1:{dead}/first"',
                log,
            ), log
        # both peers are now out for fail_timeout (10 s): nobody is even tried
        status, _, _ = client.get("/second")
        assert status == 502
        # nginx's layout: the URL it would have gone to (the group's name for the
        # host) after the request line, before the host
        assert re.search(
            r"no live upstreams while connecting to upstream, client: 127\.0\.0\.1, "
            r'server: [^,]*, request: "GET /second HTTP/1\.1", upstream: "http://app/second"',
            error_log(server),
        ), error_log(server)
        # a proxy_pass to an address is never taken out
        for _ in range(2):
            assert client.get("/direct/x")[0] == 502
    assert error_log(server).count(f'upstream: "http://127.0.0.1:{dead1}/direct/x"') == 2


def test_proxy_next_upstream_http_503(portico, backends) -> None:
    a, b = backends("a", status=503), backends("b")
    server = portico(
        config(
            "upstream app {{ server {a} max_fails=0; server {b} max_fails=0; }}",
            "location /listed/ {{ proxy_pass http://app; "
            "proxy_next_upstream error timeout http_503; }} "
            "location /unlisted/ {{ proxy_pass http://app; }}",
        ),
        a=a.address,
        b=b.address,
    )
    with Client(server.port) as client:
        answers = [client.get(f"/listed/{i}")[:2] for i in range(10)]
        assert answers == [(200, "b")] * 10
        answers = [client.get(f"/unlisted/{i}")[:2] for i in range(10)]
    assert set(answers) == {(200, "b"), (503, "a")}  # the 503s reach the client
    assert answers.count((503, "a")) >= 3


NEXT_UPSTREAM = """
upstream once {{ server {a} max_fails=0; server {b} max_fails=0; }}
upstream replay {{ server {a} max_fails=0; server {b} max_fails=0; }}
upstream idempotent {{ server {a} max_fails=0; server {b} max_fails=0; }}
upstream refused {{ server 127.0.0.1:{dead} max_fails=0; server {b} max_fails=0; }}
"""
NEXT_UPSTREAM_LOCATIONS = """
location /once/ {{ proxy_pass http://once; }}
location /replay/ {{ proxy_pass http://replay; proxy_next_upstream error non_idempotent; }}
location /idempotent/ {{ proxy_pass http://idempotent; }}
location /refused/ {{ proxy_pass http://refused; }}
"""


@pytest.fixture
def dropping(portico, backends) -> tuple[Portico, Backend, Backend]:
    """Groups of a (closes every request unanswered) then b; each group starts at a."""
    a, b = backends("a", drop=True), backends("b")
    server = portico(
        config(NEXT_UPSTREAM, NEXT_UPSTREAM_LOCATIONS),
        a=a.address,
        b=b.address,
        dead=free_port(),
    )
    return server, a, b


def test_a_post_that_reached_a_peer_is_not_sent_again(dropping) -> None:
    server, a, b = dropping
    with Client(server.port) as client:
        status, backend, _ = client.get("/once/x", "POST", b"payload")
    assert (status, backend) == (502, None)
    assert (a.stats.requests, b.stats.requests) == (1, 0)
    assert "upstream prematurely closed connection" in error_log(server)


def test_a_post_is_sent_again_with_non_idempotent(dropping) -> None:
    server, a, b = dropping
    with Client(server.port) as client:
        status, backend, body = client.get("/replay/x", "POST", b"payload")
    assert (status, backend) == (200, "b")
    assert b'"body": "payload"' in body
    assert (a.stats.requests, b.stats.requests) == (1, 1)


def test_a_chunked_post_is_sent_again_whole(dropping) -> None:
    server, a, b = dropping
    pieces = [b"first piece ", b"second piece ", b"x" * 5000]
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /replay/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        for piece in pieces:
            sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        response = http.client.HTTPResponse(sock, method="POST")
        try:
            response.begin()
            status, backend, body = (
                response.status,
                response.getheader("X-Backend"),
                response.read(),
            )
        finally:
            response.close()
    assert (status, backend) == (200, "b")
    echo = json.loads(body)
    assert echo["body"] == b"".join(pieces).decode()
    assert (a.stats.requests, b.stats.requests) == (1, 1)


def test_a_post_too_big_to_keep_is_not_sent_again(dropping) -> None:
    # proxy_request_buffer_size is 64k: a larger body streams through and is not kept
    server, a, b = dropping
    body = b"z" * 100_000
    with Client(server.port) as client:
        status, backend, _ = client.get("/replay/x", "POST", body)
    assert (status, backend) == (502, None)
    assert (a.stats.requests, b.stats.requests) == (1, 0)


def test_a_get_is_sent_again_and_a_post_that_never_left_is_too(dropping) -> None:
    server, a, b = dropping
    with Client(server.port) as client:
        assert client.get("/idempotent/x")[:2] == (200, "b")
        assert (a.stats.requests, b.stats.requests) == (1, 1)
        # connection refused: the POST never reached anyone, so the next peer gets it
        status, backend, body = client.get("/refused/x", "POST", b"payload")
    assert (status, backend) == (200, "b")
    assert b'"body": "payload"' in body


TRIES_UPSTREAMS = """
upstream two {{ server {x} max_fails=0; server {y} max_fails=0; server {z} max_fails=0; }}
upstream all {{ server {x} max_fails=0; server {y} max_fails=0; server {z} max_fails=0; }}
"""
TRIES_LOCATIONS = """
proxy_next_upstream error timeout http_503;
location /two/ {{ proxy_pass http://two; proxy_next_upstream_tries 2; }}
location /all/ {{ proxy_pass http://all; }}
"""


@pytest.fixture
def unavailable(portico, backends) -> tuple[Portico, list[Backend]]:
    """Three peers that answer 503 to everything."""
    peers = [backends(name, status=503) for name in "xyz"]
    server = portico(config(TRIES_UPSTREAMS, TRIES_LOCATIONS), **{p.name: p.address for p in peers})
    return server, peers


def test_proxy_next_upstream_tries_limits_the_attempts(unavailable) -> None:
    server, peers = unavailable
    with Client(server.port) as client:
        # the second attempt is the last one allowed: its answer goes to the client
        assert client.get("/two/x") == (503, "y", b"y")
    assert [p.stats.requests for p in peers] == [1, 1, 0]


def test_when_every_peer_answers_503_the_client_gets_the_last_answer(unavailable) -> None:
    server, peers = unavailable
    with Client(server.port) as client:
        assert client.get("/all/x") == (503, "z", b"z")
    assert [p.stats.requests for p in peers] == [1, 1, 1]
