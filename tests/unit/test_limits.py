"""limit_req's leaky bucket and the shared slot table, with a manual clock."""

from __future__ import annotations

from portico.limits import (
    SLOT_SIZE,
    ConnectionLimiter,
    LeakyBucket,
    RateLimiter,
    SlotTable,
    Zone,
    digest,
)


def run(bucket: LeakyBucket, times_ms: list[int]) -> list[bool]:
    """Feed requests at the given times to one key; which were allowed."""
    excess, last, fresh = 0, 0, True
    allowed = []
    for now in times_ms:
        verdict, new_excess = bucket.step(excess, last, now, fresh)
        allowed.append(verdict.allowed)
        if verdict.allowed:
            excess, last, fresh = new_excess, now, False
    return allowed


def test_rate_without_burst_allows_one_per_interval() -> None:
    bucket = LeakyBucket(rate=10, burst=0, nodelay=True)  # one per 100 ms
    assert run(bucket, [0, 50, 99, 100, 150, 200]) == [True, False, False, True, False, True]


def test_burst_with_nodelay() -> None:
    bucket = LeakyBucket(rate=10, burst=5, nodelay=True)
    # 1 + 5 at once, the 7th refused; 100 ms later one more fits
    assert run(bucket, [0] * 7 + [100, 100]) == [True] * 6 + [False, True, False]


def test_burst_without_nodelay_delays() -> None:
    bucket = LeakyBucket(rate=10, burst=5, nodelay=False)
    excess, delays = 0, []
    for i in range(6):
        verdict, excess = bucket.step(excess, 0, 0, i == 0)
        delays.append(round(verdict.delay, 3))
    # each waiting request waits one more interval
    assert delays == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_delay_parameter_serves_the_first_ones_at_once() -> None:
    bucket = LeakyBucket(rate=10, burst=5, nodelay=False, delay=2)
    excess, delays = 0, []
    for i in range(5):
        verdict, excess = bucket.step(excess, 0, 0, i == 0)
        delays.append(round(verdict.delay, 3))
    assert delays == [0.0, 0.0, 0.0, 0.1, 0.2]


def test_rate_per_minute() -> None:
    bucket = LeakyBucket(rate=1 / 60, burst=0, nodelay=True)
    assert run(bucket, [0, 30_000, 59_999, 60_000]) == [True, False, False, True]


def test_slot_table_finds_and_evicts_the_stalest() -> None:
    table = SlotTable(bytearray(SLOT_SIZE * 4))
    keys = [digest(bytes([i])) for i in range(6)]
    for age, key in enumerate(keys[:4]):
        index, _, _, fresh = table.find(key, lambda a, b: b)
        assert fresh
        table.store(index, key, 0, age)
    # known keys are found again
    for age, key in enumerate(keys[:4]):
        index, _, last, fresh = table.find(key, lambda a, b: b)
        assert not fresh and last == age
    # the table is full: a new key takes the slot of the stalest (age 0)
    index, _, _, fresh = table.find(keys[4], lambda a, b: b)
    assert fresh
    table.store(index, keys[4], 0, 10)
    assert table.find(keys[0], lambda a, b: b)[3]  # evicted


def test_shared_rate_limiter_across_processes() -> None:
    import os

    zone = Zone("test", 64 * 1024)
    limiter = RateLimiter(zone, LeakyBucket(rate=1, burst=2, nodelay=True))
    # a child process uses up the burst; the parent sees it
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            limiter.check(b"client", 1000)
        os._exit(0)
    os.waitpid(pid, 0)
    assert not limiter.check(b"client", 1000).allowed
    assert limiter.check(b"other", 1000).allowed


def test_connection_limiter_counts_and_releases() -> None:
    limiter = ConnectionLimiter(Zone("conns", 64 * 1024), limit=2)
    assert limiter.acquire(b"a") and limiter.acquire(b"a")
    assert not limiter.acquire(b"a")
    assert limiter.acquire(b"b")
    limiter.release(b"a")
    assert limiter.acquire(b"a")
    for _ in range(5):
        limiter.release(b"a")  # never below zero
    assert limiter.acquire(b"a") and limiter.acquire(b"a") and not limiter.acquire(b"a")
