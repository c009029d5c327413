"""limit_req and limit_conn: nginx's request-rate and connection limits, shared by workers.

Rate (``limit_req``), nginx's leaky bucket, per key (for example the client address):
the bucket drains at ``rate`` requests per second; each request adds one; a request
that would make it hold more than ``burst`` is refused (``limit_req_status``, 503).
Amounts are kept in thousandths of a request, as nginx does, so the arithmetic is
integer and exact:

    excess' = max(0, excess - rate_per_ms_x1000 * elapsed_ms + 1000)
    refused  if excess' > burst * 1000
    delay    = (excess' - delay_x1000) / rate   (0 with nodelay, or below ``delay=``)

Connections (``limit_conn``): at most N requests in progress per key; one more is
refused (``limit_conn_status``, 503) until one of them ends.

Zones live in shared memory that the master maps before forking, so every worker sees
the same counters. A zone is a fixed table of slots (open addressing); each slot holds a
64-bit digest of the key and its state. A full table evicts the stalest slot among
those probed, as nginx evicts least recently used states. One process-shared lock per
zone guards updates (they take a few microseconds).

``LeakyBucket`` and ``SlotTable`` are pure: the clock and the memory are passed in.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct
from dataclasses import dataclass
from typing import Any

# a slot: digest (8 bytes), value a (8), value b (8): 24 bytes
_SLOT = struct.Struct("<Qqq")
SLOT_SIZE = _SLOT.size
_PROBES = 8


def digest(key: bytes) -> int:
    """A stable 64-bit digest of a key (0 means an empty slot, so it is never 0)."""
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return value or 1


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    delay: float  # seconds to wait before going on (limit_req without nodelay)


class LeakyBucket:
    """nginx's limit_req arithmetic, pure. ``rate`` in requests per second."""

    __slots__ = ("burst_x1000", "delay_x1000", "nodelay", "rate_x1000")

    def __init__(self, rate: float, burst: int, nodelay: bool, delay: int = 0) -> None:
        # thousandths of a request per second; a float, so that 1r/m is exactly one a
        # minute (nginx rounds it down to one per 62.5 s)
        self.rate_x1000 = rate * 1000
        self.burst_x1000 = burst * 1000
        self.nodelay = nodelay
        self.delay_x1000 = delay * 1000

    def step(self, excess: int, last_ms: int, now_ms: int, fresh: bool) -> tuple[Verdict, int]:
        """Given the stored state, judge one request; return the verdict and the new
        excess (store it with ``now_ms`` when the request is allowed)."""
        if fresh:
            new_excess = 0
        else:
            elapsed = max(0, now_ms - last_ms)
            drained = int(self.rate_x1000 * elapsed / 1000 + 1e-9)
            new_excess = max(0, excess - drained + 1000)
        if new_excess > self.burst_x1000:
            return Verdict(False, 0.0), excess
        if self.nodelay or new_excess <= self.delay_x1000:
            return Verdict(True, 0.0), new_excess
        return Verdict(True, (new_excess - self.delay_x1000) / self.rate_x1000), new_excess


class SlotTable:
    """A table of (digest, a, b) slots over a buffer. Not locked: the caller locks."""

    __slots__ = ("buffer", "count")

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.count = len(buffer) // SLOT_SIZE

    def find(self, key_digest: int, stale: Any) -> tuple[int, int, int, bool]:
        """The slot index for a digest: (index, a, b, fresh). A new key takes an empty
        slot, or the one ``stale`` ranks first among the probed (an eviction)."""
        start = key_digest % self.count
        victim = -1
        victim_rank = None
        for i in range(_PROBES):
            index = (start + i) % self.count
            stored, a, b = _SLOT.unpack_from(self.buffer, index * SLOT_SIZE)
            if stored == key_digest:
                return index, a, b, False
            if stored == 0:
                return index, 0, 0, True
            rank = stale(a, b)
            if victim_rank is None or rank < victim_rank:
                victim, victim_rank = index, rank
        return victim, 0, 0, True

    def store(self, index: int, key_digest: int, a: int, b: int) -> None:
        _SLOT.pack_into(self.buffer, index * SLOT_SIZE, key_digest, a, b)


class Zone:
    """A named shared zone: memory and a lock, created by the master before fork."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.memory = mmap.mmap(-1, max(size, SLOT_SIZE * 64))
        self.lock = multiprocessing.get_context("fork").Lock()
        self.table = SlotTable(self.memory)


class RateLimiter:
    """``limit_req`` on a zone: state a = excess (thousandths), b = last time (ms)."""

    def __init__(self, zone: Zone, bucket: LeakyBucket) -> None:
        self.zone = zone
        self.bucket = bucket

    def check(self, key: bytes, now_ms: int) -> Verdict:
        key_digest = digest(key)
        zone = self.zone
        with zone.lock:
            index, excess, last, fresh = zone.table.find(key_digest, lambda a, b: b)
            verdict, new_excess = self.bucket.step(excess, last, now_ms, fresh)
            if verdict.allowed:
                zone.table.store(index, key_digest, new_excess, now_ms)
        return verdict


class ConnectionLimiter:
    """``limit_conn`` on a zone: state a = requests in progress, b = unused."""

    def __init__(self, zone: Zone, limit: int) -> None:
        self.zone = zone
        self.limit = limit

    def acquire(self, key: bytes) -> bool:
        key_digest = digest(key)
        zone = self.zone
        with zone.lock:
            index, count, _, fresh = zone.table.find(key_digest, lambda a, b: a)
            if not fresh and count >= self.limit:
                return False
            zone.table.store(index, key_digest, (0 if fresh else count) + 1, 0)
        return True

    def release(self, key: bytes) -> None:
        key_digest = digest(key)
        zone = self.zone
        with zone.lock:
            index, count, _, fresh = zone.table.find(key_digest, lambda a, b: a)
            if fresh:
                return
            # the slot keeps its digest (an emptied slot would cut the probe chain of
            # keys stored after it); at 0 it is the first to be evicted
            zone.table.store(index, key_digest, max(0, count - 1), 0)


def make_zones(confs: Any, previous: dict[str, Zone] | None = None) -> dict[str, Zone]:
    """The zones a config needs; one of the same name and size is kept across reloads
    (its counters go on), as nginx keeps its shared zones."""
    zones = {}
    for name, conf in confs.items():
        old = (previous or {}).get(name)
        if old is not None and old.size == conf.size:
            zones[name] = old
        else:
            zones[name] = Zone(name, conf.size)
    return zones
