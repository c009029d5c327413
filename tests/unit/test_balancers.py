"""The load-balancing core: every method's contract, failure accounting, and each rule.

Time is a ManualClock and randomness random.Random(seed): every run replays the same
sequence, and nothing here sleeps.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from portico.upstream import balancers
from portico.upstream.balancers import (
    METHODS,
    Balancer,
    Peer,
    PeerSpec,
    make_balancer,
)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def build(method: str, *specs: PeerSpec, seed: int = 0) -> tuple[Balancer, ManualClock]:
    clock = ManualClock()
    return make_balancer(method, specs, clock, random.Random(seed)), clock


def s(address: str, **kwargs: object) -> PeerSpec:
    return PeerSpec(address, **kwargs)  # type: ignore[arg-type]


def random_keys(n: int, size: int = 4, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def run(
    bal: Balancer,
    keys: list[bytes],
    elapsed: Callable[[Peer], float] = lambda peer: 0.001,
) -> Counter[str]:
    """Sequential requests: pick, then done at once. Returns picks per address."""
    counts: Counter[str] = Counter()
    for key in keys:
        peer = bal.pick(key)
        assert peer is not None
        counts[peer.address] += 1
        bal.done(peer, elapsed(peer), failed=False)
    return counts


def peer_named(bal: Balancer, address: str) -> Peer:
    return next(p for p in bal.peers + bal.backups if p.address == address)


def pick_exactly(bal: Balancer, address: str, key: bytes = b"k") -> Peer:
    """Force an attempt onto one server, whatever the method, by marking the rest tried."""
    target = peer_named(bal, address)
    others = [p for p in bal.peers + bal.backups if p is not target]
    peer = bal.pick(key, tried=others)
    assert peer is target, f"{address} was not available"
    return peer


def fail(bal: Balancer, address: str) -> None:
    bal.done(pick_exactly(bal, address), 0.001, failed=True)


# --- The contract, for every method -------------------------------------------------------

WEIGHTED_SHARE = [m for m in METHODS if m != "fair"]


@pytest.mark.parametrize("method", METHODS)
def test_never_picks_a_down_server(method: str) -> None:
    bal, _ = build(method, s("a"), s("b", down=True), s("c"))
    counts = run(bal, random_keys(300))
    assert counts["b"] == 0
    assert counts["a"] > 0 and counts["c"] > 0


@pytest.mark.parametrize("method", METHODS)
def test_never_picks_a_tried_server(method: str) -> None:
    bal, _ = build(method, s("a"), s("b"), s("c"))
    for key in random_keys(50):
        first = bal.pick(key)
        assert first is not None
        second = bal.pick(key, tried=[first])
        assert second is not None and second is not first
        third = bal.pick(key, tried=(first, second))
        assert third is not None and third not in (first, second)
        assert bal.pick(key, tried={first, second, third}) is None
        for peer in (first, second, third):
            bal.done(peer, 0.001, failed=False)


@pytest.mark.parametrize("method", METHODS)
def test_returns_none_when_everything_is_down(method: str) -> None:
    bal, _ = build(method, s("a", down=True), s("b", down=True), s("x", backup=True, down=True))
    assert bal.pick(b"key") is None


@pytest.mark.parametrize("method", METHODS)
def test_backups_serve_only_when_no_primary_is_usable(method: str) -> None:
    bal, clock = build(method, s("a"), s("b"), s("x", backup=True))
    assert run(bal, random_keys(100))["x"] == 0

    a, b = bal.peers
    x = bal.backups[0]
    # Primaries already tried for this request: the retry goes to the backup.
    assert bal.pick(b"k", tried=[a, b]) is x
    bal.done(x, 0.001, failed=False)

    # Primaries taken out by failures: everything goes to the backup.
    fail(bal, "a")
    fail(bal, "b")
    assert run(bal, random_keys(20)) == Counter({"x": 20})

    # Primaries come back (as trials) once fail_timeout is over.
    clock.advance(10.0)
    peer = bal.pick(b"k")
    assert peer in (a, b)


@pytest.mark.parametrize("method", METHODS)
def test_down_backup_is_never_used(method: str) -> None:
    bal, _ = build(method, s("a", down=True), s("x", backup=True, down=True), s("y", backup=True))
    assert run(bal, random_keys(20)) == Counter({"y": 20})


@pytest.mark.parametrize("method", WEIGHTED_SHARE)
def test_shares_follow_weights(method: str) -> None:
    bal, _ = build(method, s("a", weight=3), s("b", weight=1))
    counts = run(bal, random_keys(4000))
    assert counts["a"] / 4000 == pytest.approx(0.75, abs=0.05)


def test_fair_gives_more_to_heavier_servers_of_equal_speed() -> None:
    bal, _ = build("fair", s("a"), s("b"), s("c", weight=2))
    counts = run(bal, random_keys(3000))
    assert counts["c"] > counts["a"] + 500
    assert counts["c"] > counts["b"] + 500


@pytest.mark.parametrize("method", METHODS)
def test_active_counts_attempts_in_flight(method: str) -> None:
    bal, _ = build(method, s("a"), s("b"))
    picked = [bal.pick(key) for key in random_keys(6)]
    assert all(p is not None for p in picked)
    assert sum(p.active for p in bal.peers) == 6
    for peer in picked:
        assert peer is not None
        bal.done(peer, 0.001, failed=False)
    assert [p.active for p in bal.peers] == [0, 0]


@pytest.mark.parametrize("method", METHODS)
def test_failed_server_is_out_for_fail_timeout_then_gets_one_trial(method: str) -> None:
    bal, clock = build(method, s("a"), s("b"), s("c"))
    a = peer_named(bal, "a")
    fail(bal, "a")
    assert run(bal, random_keys(60))["a"] == 0

    clock.advance(10.0)
    trial = pick_exactly(bal, "a")
    # While the trial is in flight, nothing else goes to a.
    assert run(bal, random_keys(60))["a"] == 0
    assert bal.pick(b"k", tried=[peer_named(bal, "b"), peer_named(bal, "c")]) is None

    bal.done(trial, 0.001, failed=False)
    assert a.fails == 0
    for _ in range(3):
        bal.done(pick_exactly(bal, "a"), 0.001, failed=False)


def test_methods_and_classes_match() -> None:
    assert set(METHODS) == {
        "round_robin",
        "ip_hash",
        "hash",
        "hash_consistent",
        "fair",
        "least_conn",
        "random",
        "random_two",
    }
    for method in METHODS:
        bal, _ = build(method, s("a"))
        assert bal.method == method


def test_unknown_method_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown load balancing method 'sticky'"):
        make_balancer("sticky", [s("a")], ManualClock(), random.Random(0))


def test_a_group_needs_a_primary_server() -> None:
    with pytest.raises(ValueError, match="at least one server"):
        make_balancer("round_robin", [s("x", backup=True)], ManualClock(), random.Random(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": 0}, "weight must be 1 or more"),
        ({"max_fails": -1}, "max_fails must be 0 or more"),
        ({"fail_timeout": -1.0}, "fail_timeout must be 0 or more"),
    ],
)
def test_peer_spec_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s("10.0.0.1:80", **kwargs)


def test_module_does_no_io_and_reads_no_global_clock_or_randomness() -> None:
    # Pure core (STYLE.md): only the TYPE_CHECKING block may name `random`.
    tree = ast.parse(Path(balancers.__file__).read_text())
    forbidden = {"asyncio", "socket", "time", "random", "os", "selectors", "threading"}
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            continue
        assert not names & forbidden, ast.unparse(node)


# --- Failure accounting ---------------------------------------------------------------------


def test_max_fails_failures_close_together_take_a_server_out() -> None:
    bal, clock = build("round_robin", s("a", max_fails=3, fail_timeout=10.0), s("b"))
    a = peer_named(bal, "a")
    fail(bal, "a")
    clock.advance(6.0)
    fail(bal, "a")
    assert a.is_available(clock())
    clock.advance(10.0)  # each failure within fail_timeout of the previous one
    fail(bal, "a")
    assert not a.is_available(clock())
    assert run(bal, random_keys(10)) == Counter({"b": 10})


def test_failures_further_apart_than_fail_timeout_do_not_add_up() -> None:
    bal, clock = build("round_robin", s("a", max_fails=2, fail_timeout=10.0), s("b"))
    a = peer_named(bal, "a")
    for _ in range(5):
        fail(bal, "a")
        assert a.fails == 1
        assert a.is_available(clock())
        clock.advance(10.5)


def test_successes_between_failures_do_not_clear_the_count() -> None:
    # nginx: a server failing every other request is still taken out.
    bal, clock = build("round_robin", s("a", max_fails=2), s("b"))
    a = peer_named(bal, "a")
    fail(bal, "a")
    bal.done(pick_exactly(bal, "a"), 0.001, failed=False)
    assert a.fails == 1
    fail(bal, "a")
    assert not a.is_available(clock())


def test_a_success_after_fail_timeout_clears_old_failures() -> None:
    bal, clock = build("round_robin", s("a", max_fails=2), s("b"))
    a = peer_named(bal, "a")
    fail(bal, "a")
    clock.advance(10.5)
    bal.done(pick_exactly(bal, "a"), 0.001, failed=False)
    assert a.fails == 0


def test_unavailable_for_exactly_fail_timeout() -> None:
    bal, clock = build("round_robin", s("a", fail_timeout=30.0), s("b"))
    a = peer_named(bal, "a")
    fail(bal, "a")
    clock.advance(29.99)
    assert not a.is_available(clock())
    assert bal.pick(b"", tried=[peer_named(bal, "b")]) is None
    clock.advance(0.01)
    assert a.is_available(clock())


def test_failed_trial_takes_the_server_out_again() -> None:
    bal, clock = build("round_robin", s("a", max_fails=2, fail_timeout=5.0), s("b"))
    a = peer_named(bal, "a")
    fail(bal, "a")
    fail(bal, "a")
    clock.advance(5.0)
    trial = pick_exactly(bal, "a")
    assert not a.is_available(clock())  # one trial at a time
    bal.done(trial, 0.001, failed=True)
    assert not a.is_available(clock())
    clock.advance(4.9)
    assert not a.is_available(clock())
    clock.advance(0.1)
    # Next trial; this one succeeds and a is back for good.
    bal.done(pick_exactly(bal, "a"), 0.001, failed=False)
    assert a.fails == 0 and a.is_available(clock())
    fail(bal, "a")
    assert a.is_available(clock())  # a fresh count: 1 of 2


def test_failures_of_older_attempts_extend_the_time_out() -> None:
    bal, clock = build("round_robin", s("a", fail_timeout=10.0), s("b"))
    a = peer_named(bal, "a")
    first = pick_exactly(bal, "a")
    second = pick_exactly(bal, "a")
    bal.done(first, 0.001, failed=True)
    clock.advance(5.0)
    bal.done(second, 5.0, failed=True)  # started before a was taken out
    clock.advance(6.0)
    assert not a.is_available(clock())
    clock.advance(4.0)
    assert a.is_available(clock())


def test_max_fails_zero_never_takes_a_server_out() -> None:
    bal, clock = build("round_robin", s("a", max_fails=0), s("b"))
    a = peer_named(bal, "a")
    for _ in range(50):
        fail(bal, "a")
    assert a.fails == 0
    assert a.is_available(clock())
    assert run(bal, random_keys(10))["a"] == 5


@pytest.mark.parametrize("method", METHODS)
def test_the_only_server_of_a_group_is_never_taken_out(method: str) -> None:
    # as nginx: nothing could take its requests, and an app restarting behind it must be
    # reached again at once; a second server, even a backup, brings the rules back
    bal, _ = build(method, s("only", max_fails=1, fail_timeout=10.0))
    for _ in range(5):
        fail(bal, "only")
    assert run(bal, [b"k"] * 3) == Counter({"only": 3})
    bal, _ = build(method, s("a", max_fails=1, fail_timeout=10.0), s("x", backup=True))
    fail(bal, "a")
    assert run(bal, [b"k"] * 3) == Counter({"x": 3})


def test_when_everything_has_failed_primaries_come_back_before_backups() -> None:
    bal, clock = build("round_robin", s("a"), s("b"), s("x", backup=True))
    fail(bal, "a")
    fail(bal, "b")
    fail(bal, "x")
    assert bal.pick() is None
    clock.advance(10.0)
    first = bal.pick()
    second = bal.pick()
    assert first is not None and second is not None
    assert {first.address, second.address} == {"a", "b"}
    third = bal.pick()  # both primaries on trial: the backup's trial
    assert third is not None and third.address == "x"
    assert bal.pick() is None


def test_round_robin_brings_a_failed_server_back_gradually() -> None:
    # nginx: a failure lowers effective_weight by weight // max_fails; each round it takes
    # part in adds one back, up to the configured weight.
    bal, clock = build("round_robin", s("a", weight=20, max_fails=2), s("b", weight=20))
    a = peer_named(bal, "a")
    fail(bal, "a")
    assert a.effective_weight == 10
    fail(bal, "a")
    assert a.effective_weight == 1  # the forced pick gave one back before the failure
    clock.advance(10.0)
    bal.done(pick_exactly(bal, "a"), 0.001, failed=False)  # a good trial
    assert run(bal, [b""] * 20)["a"] <= 7  # 10 at full weight
    assert a.effective_weight == 20
    assert run(bal, [b""] * 200)["a"] == pytest.approx(100, abs=3)


# --- round_robin ---------------------------------------------------------------------------


def test_smooth_weighted_round_robin_5_1_1() -> None:
    bal, _ = build("round_robin", s("a", weight=5), s("b"), s("c"))
    sequence = []
    for _ in range(21):
        peer = bal.pick()
        assert peer is not None
        sequence.append(peer.address)
        bal.done(peer, 0.001, failed=False)
    assert "".join(sequence) == "aabacaa" * 3


def test_round_robin_does_not_wait_for_done() -> None:
    bal, _ = build("round_robin", s("a"), s("b"), s("c"))
    picked = [bal.pick() for _ in range(6)]
    assert [p.address for p in picked if p] == ["a", "b", "c", "a", "b", "c"]


class PlainRoundRobin(balancers.RoundRobin):
    """round_robin without its schedule: every pick a pass over the servers."""

    __slots__ = ()
    SCHEDULE_MAX_WEIGHT = 0


@pytest.mark.parametrize(
    "weights",
    [(1, 1), (1, 1, 1, 1, 1), (5, 1, 1), (3, 2), (7, 4, 2, 1), (1,), (2, 2, 1, 1)],
    ids=str,
)
@pytest.mark.parametrize("seed", range(4))
def test_round_robin_with_its_schedule_picks_exactly_as_without(
    weights: tuple[int, ...], seed: int
) -> None:
    # the same requests, failures, retries and passing time for both: the same picks
    specs = [s(f"p{i}", weight=w, max_fails=2, fail_timeout=3.0) for i, w in enumerate(weights)]
    specs.append(s("backup", backup=True))
    clock = ManualClock()
    scheduled = balancers.RoundRobin(specs, clock, random.Random(0))
    plain = PlainRoundRobin(specs, clock, random.Random(0))
    rng = random.Random(seed)
    planned = 0
    for step in range(3000):
        calm = (step // 500) % 2 == 0  # long calm stretches, where a schedule is used
        tried_names = (
            rng.sample([p.address for p in plain.peers], k=1)
            if not calm and rng.random() < 0.2
            else []
        )
        picked = []
        for bal in (scheduled, plain):
            tried = [p for p in bal.peers if p.address in tried_names]
            picked.append(bal.pick(b"", tried))
        assert [p and p.address for p in picked] == [picked[1] and picked[1].address] * 2, step
        planned += any(t.schedule is not None for t in scheduled._tiers)
        failed = not calm and rng.random() < 0.15
        for bal, peer in zip((scheduled, plain), picked, strict=True):
            if peer is not None:
                bal.done(peer, 0.001, failed=failed)
        clock.advance(rng.choice((0.0, 0.01, 0.5, 2.0)))
    assert planned > 1000  # the calm stretches ran on the schedule


def test_round_robin_writes_back_its_state_before_a_retry() -> None:
    bal, _ = build("round_robin", s("a", weight=3), s("b", weight=2))
    plain = PlainRoundRobin([s("a", weight=3), s("b", weight=2)], ManualClock(), random.Random(0))
    for _ in range(7):
        assert bal.pick().address == plain.pick().address  # type: ignore[union-attr]
    assert bal._tiers[0].schedule is not None
    a, plain_a = peer_named(bal, "a"), peer_named(plain, "a")
    assert bal.pick(tried=[a]).address == plain.pick(tried=[plain_a]).address  # type: ignore[union-attr]
    assert [p.current_weight for p in bal.peers] == [p.current_weight for p in plain.peers]


# --- ip_hash -------------------------------------------------------------------------------

V4 = bytes([192, 168, 1, 0])


def test_ip_hash_is_nginx_formula() -> None:
    # 89 -> (89*113+192)%6271 -> (..*113+168)%6271 -> (..*113+1)%6271 = 154; 154 % 3 = 1.
    bal, _ = build("ip_hash", s("a"), s("b"), s("c"))
    peer = bal.pick(V4)
    assert peer is not None and peer.address == "b"


def test_ip_hash_keeps_a_slash_24_on_one_server() -> None:
    bal, _ = build("ip_hash", s("a"), s("b"), s("c"), s("d"))
    counts = run(bal, [bytes([10, 20, 30, last]) for last in range(256)])
    assert len(counts) == 1


def test_ip_hash_spreads_many_networks() -> None:
    bal, _ = build("ip_hash", s("a"), s("b"), s("c"), s("d"))
    counts = run(bal, random_keys(4000))
    assert len(counts) == 4
    for address in "abcd":
        assert 0.2 <= counts[address] / 4000 <= 0.3


def test_ip_hash_uses_all_of_an_ipv6_address() -> None:
    bal, _ = build("ip_hash", s("a"), s("b"), s("c"), s("d"))
    prefix = bytes.fromhex("20010db8000000000000000000000a")
    counts = run(bal, [prefix + bytes([last]) for last in range(64)])
    assert len(counts) == 4
    same = run(bal, [prefix + b"\x07"] * 20)
    assert len(same) == 1


def test_ip_hash_unix_socket_clients_share_one_server() -> None:
    bal, _ = build("ip_hash", s("a"), s("b"), s("c"))
    assert len(run(bal, [b""] * 10)) == 1


def test_ip_hash_rehashes_when_the_sticky_server_is_down() -> None:
    # The hash continues from 154 over the same three bytes: 5654 % 3 = 2, server c.
    bal, _ = build("ip_hash", s("a"), s("b", down=True), s("c"))
    peer = bal.pick(V4)
    assert peer is not None and peer.address == "c"


def test_ip_hash_down_server_moves_only_its_own_clients() -> None:
    keys = random_keys(500)
    up, _ = build("ip_hash", s("a"), s("b"), s("c"), s("d"))
    down, _ = build("ip_hash", s("a"), s("b", down=True), s("c"), s("d"))
    for key in keys:
        before, after = up.pick(key), down.pick(key)
        assert before is not None and after is not None
        if before.address != "b":
            assert after.address == before.address
        else:
            assert after.address != "b"


def test_ip_hash_retry_goes_to_another_server() -> None:
    bal, _ = build("ip_hash", s("a"), s("b"), s("c"))
    first = bal.pick(V4)
    assert first is not None and first.address == "b"
    second = bal.pick(V4, tried=[first])
    assert second is not None and second.address == "c"  # the same rehash as for down


@pytest.mark.parametrize("method", ["ip_hash", "hash"])
def test_hash_methods_fall_back_to_round_robin_after_20_tries(method: str) -> None:
    # Nearly every hash value lands on the heavy, down server; after 20 misses the request
    # still finds the light one.
    bal, _ = build(method, s("a", weight=100, down=True), s("b"))
    assert run(bal, random_keys(200)) == Counter({"b": 200})


# --- hash ----------------------------------------------------------------------------------


def test_hash_is_nginx_formula() -> None:
    # crc32(b"hello") = 0x3610a686; (>> 16) & 0x7fff = 13840; 13840 % 3 = 1: server b.
    bal, _ = build("hash", s("a"), s("b"), s("c"))
    peer = bal.pick(b"hello")
    assert peer is not None and peer.address == "b"


def test_hash_rehashes_with_a_numbered_prefix() -> None:
    # Sums: 13840 (b), + crc("1hello") part 3798 = 17638 (b), + crc("2hello") part 2114 =
    # 19752, % 3 = 0: server a.
    bal, _ = build("hash", s("a"), s("b", down=True), s("c"))
    peer = bal.pick(b"hello")
    assert peer is not None and peer.address == "a"


def test_hash_same_key_same_server() -> None:
    bal, _ = build("hash", s("a"), s("b"), s("c"), s("d"))
    for key in (b"/index.html", b"user:42", b""):
        assert len(run(bal, [key] * 10)) == 1


# --- hash_consistent -----------------------------------------------------------------------


def ring_owners(bal: Balancer, keys: list[bytes]) -> list[str]:
    owners = []
    for key in keys:
        peer = bal.pick(key)
        assert peer is not None
        owners.append(peer.address)
        bal.done(peer, 0.001, failed=False)
    return owners


TEN = [f"10.0.0.{i}:8080" for i in range(1, 11)]
KEYS = [f"/object/{i}".encode() for i in range(10_000)]


def test_consistent_hash_removing_one_server_moves_only_its_keys() -> None:
    before = ring_owners(build("hash_consistent", *map(s, TEN))[0], KEYS)
    removed = TEN[3]
    after = ring_owners(build("hash_consistent", *(s(a) for a in TEN if a != removed))[0], KEYS)
    moved = [i for i in range(len(KEYS)) if before[i] != after[i]]
    assert len(moved) <= 0.15 * len(KEYS)
    assert all(before[i] == removed for i in moved)
    assert before.count(removed) == len(moved)


def test_consistent_hash_adding_a_server_only_takes_keys_for_it() -> None:
    before = ring_owners(build("hash_consistent", *map(s, TEN))[0], KEYS)
    added = "10.0.0.11:8080"
    after = ring_owners(build("hash_consistent", *map(s, [*TEN, added]))[0], KEYS)
    moved = [i for i in range(len(KEYS)) if before[i] != after[i]]
    assert 0 < len(moved) <= 0.15 * len(KEYS)
    assert all(after[i] == added for i in moved)


def test_consistent_hash_skips_an_unavailable_server_by_walking_the_ring() -> None:
    bal, _ = build("hash_consistent", *map(s, TEN))
    keys = KEYS[:2000]
    before = ring_owners(bal, keys)
    victim = TEN[0]
    fail(bal, victim)
    after = ring_owners(bal, keys)
    for old, new in zip(before, after, strict=True):
        if old == victim:
            assert new != victim
        else:
            assert new == old


def test_consistent_hash_handles_every_address_form() -> None:
    addresses = ["127.0.0.1:8001", "[::1]:8001", "unix:/run/app.sock", "backend.example"]
    bal, _ = build("hash_consistent", *map(s, addresses))
    counts = Counter(ring_owners(bal, KEYS[:4000]))
    assert set(counts) == set(addresses)


def test_consistent_hash_servers_with_one_address_share_its_points() -> None:
    bal, _ = build("hash_consistent", s("10.0.0.1:80"), s("10.0.0.1:80"))
    first, second = bal.peers
    a = bal.pick(b"key")
    b = bal.pick(b"key")
    assert {a, b} == {first, second}


# --- fair ----------------------------------------------------------------------------------


def fast_a_slow_b(peer: Peer) -> float:
    return 0.001 if peer.address == "a" else 0.021


def test_fair_shifts_load_to_the_faster_server() -> None:
    bal, _ = build("fair", s("a"), s("b"))
    counts = run(bal, [b""] * 1000, elapsed=fast_a_slow_b)
    assert counts["b"] <= 250


def test_fair_tries_every_new_server_early() -> None:
    bal, _ = build("fair", s("a"), s("b"), s("c"), s("d"))
    run(bal, [b""] * 12)
    assert all(p.measured for p in bal.peers)


def test_fair_retries_an_idle_server_and_gives_it_back_its_share() -> None:
    bal, clock = build("fair", s("a"), s("b"))
    speeds = {"a": 0.001, "b": 0.021}

    def timed(peer: Peer) -> float:
        clock.advance(0.1)  # ten requests a second
        return speeds[peer.address]

    assert run(bal, [b""] * 500, elapsed=timed)["b"] <= 10
    speeds["b"] = 0.001  # b recovers; only a retry can tell
    run(bal, [b""] * 1000, elapsed=timed)
    later = run(bal, [b""] * 1000, elapsed=timed)
    assert later["b"] >= 300


def test_fair_failures_never_make_a_server_look_faster() -> None:
    bal, _ = build("fair", s("a"), s("b"))
    a = peer_named(bal, "a")
    bal.done(pick_exactly(bal, "a"), 0.050, failed=False)
    bal.done(pick_exactly(bal, "a"), 0.0001, failed=True)
    assert a.response_time == pytest.approx(0.050)


def test_fair_prefers_the_less_loaded_of_equally_fast_servers() -> None:
    bal, _ = build("fair", s("a"), s("b"))
    run(bal, [b""] * 20)
    busy = pick_exactly(bal, "a")
    peer = bal.pick()
    assert peer is not None and peer.address == "b"
    assert busy.active == 1


def test_fair_with_one_usable_server_picks_it() -> None:
    bal, _ = build("fair", s("a"), s("b", down=True))
    assert run(bal, [b""] * 5) == Counter({"a": 5})


# --- least_conn ----------------------------------------------------------------------------


def test_least_conn_prefers_idle_servers() -> None:
    bal, _ = build("least_conn", s("a"), s("b"), s("c"))
    picked = [bal.pick() for _ in range(3)]
    assert {p.address for p in picked if p} == {"a", "b", "c"}
    b = peer_named(bal, "b")
    bal.done(b, 0.001, failed=False)
    assert bal.pick() is b


def test_least_conn_respects_weights_under_load() -> None:
    bal, _ = build("least_conn", s("a", weight=2), s("b"))
    for _ in range(30):
        assert bal.pick() is not None
    assert [p.active for p in bal.peers] == [20, 10]


def test_least_conn_breaks_ties_with_smooth_round_robin() -> None:
    bal, _ = build("least_conn", s("a", weight=5), s("b"), s("c"))
    sequence = []
    for _ in range(14):
        peer = bal.pick()
        assert peer is not None
        sequence.append(peer.address)
        bal.done(peer, 0.001, failed=False)
    assert "".join(sequence) == "aabacaa" * 2


# --- random, random_two --------------------------------------------------------------------


def test_random_ignores_load() -> None:
    bal, _ = build("random", s("a"), s("b"), s("c"), s("d"))
    for _ in range(10):
        pick_exactly(bal, "a")
    counts = run(bal, [b""] * 2000)
    assert counts["a"] / 2000 == pytest.approx(0.25, abs=0.04)


def test_random_two_prefers_the_less_loaded() -> None:
    bal, _ = build("random_two", s("a"), s("b"), s("c"), s("d"))
    for _ in range(10):
        pick_exactly(bal, "a")
    # a is in at most one of two distinct draws, and always loses it.
    counts = run(bal, [b""] * 500)
    assert counts["a"] == 0
    assert len(counts) == 3


def test_random_two_balances_concurrent_load() -> None:
    bal, _ = build("random_two", s("a"), s("b"), s("c"), s("d"))
    for _ in range(400):
        assert bal.pick() is not None
    assert max(p.active for p in bal.peers) - min(p.active for p in bal.peers) <= 2


def test_has_untried_counts_backups_and_skips_down_tried_and_taken_out_peers() -> None:
    bal, clock = build(
        "round_robin",
        s("a", max_fails=1, fail_timeout=10.0),
        s("b", down=True),
        s("c", backup=True),
    )
    a, _ = bal.peers
    (c,) = bal.backups
    assert bal.has_untried([])
    assert bal.has_untried([a])  # the backup is left
    assert not bal.has_untried([a, c])  # b is down
    picked = bal.pick()
    assert picked is a
    bal.done(a, 0.01, failed=True)  # a is taken out for fail_timeout
    assert not bal.has_untried([c])
    clock.advance(11.0)
    assert bal.has_untried([c])  # a may have its trial
