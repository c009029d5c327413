"""Load balancing: which server of an upstream group gets the next attempt.

An ``upstream`` block lists servers; each worker builds one :class:`Balancer` per group with
:func:`make_balancer`. For every attempt the proxy calls :meth:`Balancer.pick`, connects to
the peer it returns (or answers 502 when it returns ``None``), and calls
:meth:`Balancer.done` when the attempt is over, saying whether it failed. The methods are
nginx's (``round_robin``, ``ip_hash``, ``hash``, ``hash_consistent``, ``least_conn``,
``random``, ``random_two``) plus portico's own ``fair``.
"""

# Theory of operation
# -------------------
# Everything here is pure: time comes from an injected clock (float seconds, any epoch) and
# randomness from an injected random.Random, so tests replay exact sequences and nothing
# here touches the OS. Each worker balances on its own, as nginx does without a shared zone.
#
# Two layers:
#
#   * Peer holds the runtime state of one server and owns the failure rules, identical for
#     every method (see Peer). A method only ever sees "is this peer usable now", i.e.
#     not down, not in the request's `tried` set, and not taken out by max_fails.
#   * A Balancer subclass implements one method as `_choose(tier, key, tried, now)`, a choice
#     among the peers of one tier. `pick` asks the primary tier first and the backup tier only
#     when no primary is usable (nginx's rule); both tiers use the same method. nginx refuses
#     `backup` with the hash and random methods; we accept it so that the contract "backups
#     serve only when every primary is out" holds for every method.
#
# nginx's weighted rules (smooth round robin, hash walks, the ketama ring) work on integer
# weights and are reproduced exactly, so a user moving from nginx keeps the same stickiness:
# the same client address or key lands on the same server position as under nginx.

from __future__ import annotations

import bisect
import itertools
import math
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    # For the annotation only: the random source is always injected.
    import random

__all__ = [
    "FAIR_ALPHA",
    "FAIR_HALF_LIFE",
    "HASH_TRIES",
    "METHODS",
    "RING_POINTS_PER_WEIGHT",
    "Balancer",
    "ConsistentHash",
    "Fair",
    "Hash",
    "IpHash",
    "LeastConn",
    "Peer",
    "PeerSpec",
    "Random",
    "RandomTwo",
    "RoundRobin",
    "make_balancer",
]

#: How many hash values ``ip_hash`` and ``hash`` try before falling back to round robin (nginx).
HASH_TRIES = 20
#: Points on the ``hash_consistent`` ring per unit of weight (nginx and ketama use 160).
RING_POINTS_PER_WEIGHT = 160
#: Weight of the newest response time in ``fair``'s moving average.
FAIR_ALPHA = 0.3
#: Seconds after which an unrefreshed ``fair`` average counts for half (see :class:`Fair`).
FAIR_HALF_LIFE = 10.0


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One ``server`` line of an ``upstream`` block, as configured.

    ``address`` is ``host:port``, ``[v6]:port`` or ``unix:/path``; balancing treats it as an
    opaque name (``hash_consistent`` places a server on its ring by this name, as nginx does,
    so renaming a server moves its keys). ``weight`` is relative to the other servers.
    ``max_fails`` failed attempts, each within ``fail_timeout`` seconds of the previous one,
    take the server out for ``fail_timeout`` seconds; ``max_fails=0`` disables this.
    A ``backup`` server serves only when no primary server is available; a ``down`` server
    never serves.
    """

    address: str
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"server {self.address}: weight must be 1 or more, not {self.weight}")
        if self.max_fails < 0:
            raise ValueError(
                f"server {self.address}: max_fails must be 0 or more, not {self.max_fails}"
            )
        if self.fail_timeout < 0:
            raise ValueError(
                f"server {self.address}: fail_timeout must be 0 or more, not {self.fail_timeout}"
            )


class Peer:
    """The runtime state of one server of one upstream group, in one worker.

    ``active`` counts attempts picked and not yet reported done. ``fails`` counts recent
    failures. The failure rules, the same for every balancing method:

    * A failure counts if it comes within ``fail_timeout`` seconds of the previous counted
      failure; otherwise the count starts again at 1. Successes in between do not clear the
      count (nginx behaves the same: its success clears failures only once ``fail_timeout``
      has passed since the last one), so a server failing every other request is still taken
      out.
    * When the count reaches ``max_fails`` the server is *unavailable* for ``fail_timeout``
      seconds. After that it gets exactly one trial request; while the trial is in flight the
      server is not picked again. A successful trial puts it back in rotation with the count
      cleared; a failed trial makes it unavailable for another ``fail_timeout``.
    * ``max_fails=0`` turns all of this off: the server is never taken out.
    * As in nginx, the only server of a group (no other, no backup) is never taken out:
      there is nothing to send its requests to instead, and an app that restarts behind
      it must be reached again at once, not after ``fail_timeout`` of 502s.
    """

    __slots__ = (
        "active",
        "address",
        "available_from",
        "current_weight",
        "effective_weight",
        "failed_at",
        "fails",
        "measured",
        "on_trial",
        "response_time",
        "response_time_at",
        "spec",
        "unavailable_until",
        "weight",
    )

    def __init__(self, spec: PeerSpec) -> None:
        self.spec = spec
        self.address = spec.address  # as in :attr:`PeerSpec.address`
        self.weight = spec.weight  # (read on every pick)
        self.active = 0
        self.fails = 0
        # Time of the last counted failure; read only while fails > 0.
        self.failed_at = 0.0
        # End of the current time-out; read only while fails >= max_fails.
        self.unavailable_until = 0.0
        # True from the pick of a trial request until its done().
        self.on_trial = False
        # The three above (and ``down``) in one number, kept by _take_with_failures and
        # _finish: the peer may be picked at time ``now`` iff now >= available_from. -inf:
        # available; the end of its time-out while taken out; +inf: down, or a trial in
        # flight. A pick then compares floats instead of asking every peer.
        self.available_from = math.inf if spec.down else -math.inf
        # Smooth weighted round robin state (nginx's current_weight / effective_weight).
        # effective_weight drops on failures and climbs back by one per round, so a server
        # that just failed comes back gradually rather than at full weight.
        self.current_weight = 0
        self.effective_weight = spec.weight
        # fair: moving average of response time (seconds), when it was last updated, and
        # whether any response has been measured at all.
        self.response_time = 0.0
        self.response_time_at = 0.0
        self.measured = False

    def __repr__(self) -> str:
        return f"<Peer {self.spec.address} active={self.active} fails={self.fails}>"

    def is_available(self, now: float) -> bool:
        """Whether this server may be picked at time ``now`` (not down, not taken out)."""
        return now >= self.available_from

    def _update_available_from(self) -> None:
        spec = self.spec
        if spec.down or self.on_trial:
            self.available_from = math.inf
        elif spec.max_fails and self.fails >= spec.max_fails:
            # Taken out: back for a single trial once the time-out is over.
            self.available_from = self.unavailable_until
        else:
            self.available_from = -math.inf

    def _take_with_failures(self) -> None:
        """Picked while failures count (pick() does the rest): a peer taken out is
        only picked for a trial (is_available said so)."""
        max_fails = self.spec.max_fails
        if max_fails and self.fails >= max_fails:
            self.on_trial = True
            self._update_available_from()

    def _finish(self, now: float, failed: bool) -> None:
        """The failure rules, after a failure or any outcome while failures count (a
        success of a peer in good standing changes nothing here: done() skips it)."""
        spec = self.spec
        max_fails = spec.max_fails
        if max_fails == 0:
            return
        # The first done() after a trial pick is taken as the trial's outcome. An attempt
        # started before the time-out could end first; that is rare (it would have been
        # slower than fail_timeout) and only moves the verdict by one response.
        trial = self.on_trial
        self.on_trial = False
        recent = self.fails > 0 and now - self.failed_at <= spec.fail_timeout
        if failed:
            # While taken out, every failure counts (and renews the time-out below).
            if recent or self.fails >= max_fails:
                self.fails += 1
            else:
                self.fails = 1
            self.failed_at = now
            if self.fails >= max_fails:
                self.unavailable_until = now + spec.fail_timeout
            self.effective_weight = max(0, self.effective_weight - spec.weight // max_fails)
        elif trial or (self.fails < max_fails and not recent):
            # A good trial, or failures too old to count any more.
            self.fails = 0
        self._update_available_from()


class _Tier:
    """The primary or the backup servers of a group, with what a method precomputes."""

    __slots__ = ("cumulative", "peers", "ring", "total_weight")

    def __init__(self, peers: list[Peer], ring: _Ring | None = None) -> None:
        self.peers = peers
        # Running sums of the configured weights, down servers included: the hash methods map
        # a value to a server position independent of which servers are up, as nginx does.
        self.cumulative = list(itertools.accumulate(p.spec.weight for p in peers))
        self.total_weight = self.cumulative[-1]
        self.ring = ring

    def usable(self, now: float, tried: Collection[Peer]) -> list[Peer]:
        """The peers that may take an attempt now, in config order."""
        return [p for p in self.peers if now >= p.available_from and p not in tried]

    def peer_at(self, w: int) -> Peer:
        """The peer owning weight unit ``w`` (0 <= w < total_weight), in config order."""
        return self.peers[bisect.bisect_right(self.cumulative, w)]


class _ScheduledTier(_Tier):
    """A round_robin tier, with its period while every server is in good standing
    (see RoundRobin): the picks in order, the current weights before each, where the
    next pick is, and how many plain picks to make before planning again."""

    __slots__ = ("plan_after", "position", "schedule", "states")

    def __init__(self, peers: list[Peer]) -> None:
        super().__init__(peers)
        self.schedule: list[Peer] | None = None
        self.states: list[tuple[int, ...]] = []
        self.position = 0
        self.plan_after = 0


def _usable(peer: Peer, now: float, tried: Collection[Peer]) -> bool:
    return now >= peer.available_from and peer not in tried


def _smooth_weighted(peers: Sequence[Peer], now: float, tried: Collection[Peer]) -> Peer | None:
    """nginx's smooth weighted round robin over those of ``peers`` usable at ``now`` and
    not in ``tried`` (filtered here, in the same pass: this is every default pick).

    Each round every candidate's current_weight grows by its effective weight, the largest
    wins (the first, on ties) and pays back the round's total. Weights 5:1:1 give
    a a b a c a a: the heavy server is spread out, not sent five requests in a row.
    """
    best: Peer | None = None
    best_current = -math.inf
    total = 0
    for peer in peers:
        if now < peer.available_from or (tried and peer in tried):
            continue
        weight = peer.effective_weight
        current = peer.current_weight = peer.current_weight + weight
        total += weight
        if weight < peer.weight:
            peer.effective_weight = weight + 1
        if current > best_current:
            best = peer
            best_current = current
    if best is not None:
        best.current_weight = best_current - total
    return best


def _weighted_random(candidates: Sequence[Peer], rng: random.Random) -> Peer:
    x = rng.randrange(sum(p.spec.weight for p in candidates))
    for peer in candidates:
        x -= peer.spec.weight
        if x < 0:
            return peer
    raise AssertionError("unreachable: x < total weight")


class Balancer:
    """Chooses the server for each attempt of a request to one upstream group.

    One instance per group per worker; build it with :func:`make_balancer`. ``peers`` are the
    primary servers and ``backups`` the backup servers, each in config order. Down servers
    and servers taken out by ``max_fails`` are skipped; backups serve only while no primary
    is usable (taken out, down, or already tried for this request).
    """

    __slots__ = ("_clock", "_rng", "_tiers", "backups", "peers")

    #: The name of the method in the ``upstream`` block, e.g. ``"least_conn"``.
    method: ClassVar[str] = ""
    #: Whether the method learns from response times (has an :meth:`_observe`).
    observes: ClassVar[bool] = False

    def __init__(
        self, specs: Sequence[PeerSpec], clock: Callable[[], float], rng: random.Random
    ) -> None:
        if len(specs) == 1:
            specs = [replace(specs[0], max_fails=0)]  # the only server: never taken out
        self.peers = [Peer(s) for s in specs if not s.backup]
        self.backups = [Peer(s) for s in specs if s.backup]
        if not self.peers:
            raise ValueError("an upstream group needs at least one server that is not a backup")
        self._clock = clock
        self._rng = rng
        self._tiers = tuple(self._make_tier(t) for t in (self.peers, self.backups) if t)

    def _make_tier(self, peers: list[Peer]) -> _Tier:
        return _Tier(peers)

    def pick(self, key: bytes = b"", tried: Collection[Peer] = ()) -> Peer | None:
        """Choose the server for one attempt, or ``None`` when no server is available.

        ``key`` is the client address for ``ip_hash`` (4 bytes for IPv4, 16 for IPv6, as
        :func:`socket.inet_pton` returns them; empty for a Unix socket client) or the
        evaluated key for ``hash`` and ``hash_consistent``; other methods ignore it.
        ``tried`` holds the servers this request already tried: a retry never goes back to
        one of them. The chosen server's ``active`` count goes up by one; every pick must be
        followed by exactly one :meth:`done`.
        """
        now = self._clock()
        for tier in self._tiers:
            peer = self._choose(tier, key, tried, now)
            if peer is not None:
                peer.active += 1
                if peer.fails:
                    # a trial if the peer was taken out (its tier was not on a schedule
                    # then: a trial changes nothing a schedule stands for)
                    peer._take_with_failures()
                return peer
        return None

    def has_untried(self, tried: Collection[Peer]) -> bool:
        """Whether a server not in ``tried`` could take an attempt now (primary or backup)."""
        now = self._clock()
        return any(tier.usable(now, tried) for tier in self._tiers)

    def done(self, peer: Peer, elapsed: float, failed: bool) -> None:
        """Report the end of an attempt: ``elapsed`` seconds, and whether it ``failed``.

        What counts as a failure is the caller's rule (``proxy_next_upstream``); failures
        feed ``max_fails`` (see :class:`Peer`).
        """
        # A done() without its pick would make active negative and skew least_conn, fair and
        # random_two forever; clamp rather than let one caller bug poison the group.
        if peer.active > 0:
            peer.active -= 1
        counts = failed or peer.fails or peer.on_trial
        if not counts and not self.observes:
            return  # a success of a peer in good standing: the most common outcome
        now = self._clock()
        if counts:
            available_from, weight = peer.available_from, peer.effective_weight
            peer._finish(now, failed)
            if peer.available_from != available_from or peer.effective_weight != weight:
                self._changed()
        if self.observes:
            self._observe(peer, elapsed, failed, now)

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        raise NotImplementedError

    def _changed(self) -> None:
        """Hook: a server's availability or effective weight changed outside a pick."""

    def _observe(self, peer: Peer, elapsed: float, failed: bool, now: float) -> None:
        """Hook for methods that learn from response times (called if ``observes``)."""


class RoundRobin(Balancer):
    """``round_robin`` (the default): nginx's smooth weighted round robin.

    Over any run of requests each server gets its share of the total weight, interleaved:
    weights 5, 1, 1 for a, b, c give ``a a b a c a a`` every seven requests. A server that
    just failed re-enters with a reduced weight that climbs back by one per round.
    """

    # While every server of a tier is in good standing (available, at its full weight)
    # and attempts are first attempts, the method is periodic: its picks repeat every
    # total-weight picks, and the current weights come back to where they were. The
    # first such pick plays one period forward (_period) and later ones read the
    # schedule: one step instead of a pass over every server. The current weights the
    # schedule stands for are written back (_settle) before anything else looks at
    # them: a retry, or a server whose standing changed (_changed).

    __slots__ = ()
    method = "round_robin"
    #: The largest total weight of a tier that gets a schedule (longer periods are rare
    #: and would cost memory: a state per pick).
    SCHEDULE_MAX_WEIGHT: ClassVar[int] = 1024

    def _make_tier(self, peers: list[Peer]) -> _Tier:
        return _ScheduledTier(peers)

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        scheduled: _ScheduledTier = tier  # type: ignore[assignment]  (from _make_tier)
        schedule = scheduled.schedule
        if schedule is not None:
            if not tried:
                position = scheduled.position
                scheduled.position = position + 1 if position + 1 < len(schedule) else 0
                return schedule[position]
            _settle(scheduled)
        peer = _smooth_weighted(scheduled.peers, now, tried)
        if not tried and peer is not None:
            self._plan(scheduled)
        return peer

    def _changed(self) -> None:
        for tier in self._tiers:
            if isinstance(tier, _ScheduledTier) and tier.schedule is not None:
                _settle(tier)

    def _plan(self, tier: _ScheduledTier) -> None:
        """Make the tier's schedule if every server is in good standing and the state
        is periodic already (else try again one period later)."""
        if tier.plan_after > 0:
            tier.plan_after -= 1
            return
        peers = tier.peers
        if tier.total_weight > self.SCHEDULE_MAX_WEIGHT:
            return
        unwell = any(p.available_from != -math.inf or p.effective_weight != p.weight for p in peers)
        period = (
            None
            if unwell
            else _period([p.weight for p in peers], [p.current_weight for p in peers])
        )
        if period is None:
            # a server not well (down for good, say), or not periodic yet: ask again
            # a period later, not on every pick
            tier.plan_after = tier.total_weight
            return
        picks, tier.states = period
        tier.schedule = [peers[i] for i in picks]
        tier.position = 0


def _period(weights: list[int], start: list[int]) -> tuple[list[int], list[tuple[int, ...]]] | None:
    """Smooth weighted round robin over servers that are all usable at their full
    ``weights``, from the current weights ``start``: the index of each pick for one
    period (total-weight picks) and the current weights before each; None when the
    weights after the period are not ``start`` again (not periodic yet)."""
    total = sum(weights)
    state = list(start)
    picks = []
    states = []
    for _ in range(total):
        states.append(tuple(state))
        best = 0
        for i, weight in enumerate(weights):
            state[i] += weight
            if state[i] > state[best]:
                best = i
        state[best] -= total
        picks.append(best)
    return (picks, states) if state == start else None


def _settle(tier: _ScheduledTier) -> None:
    """Write back the current weights the tier's schedule stands for, and drop it."""
    for peer, weight in zip(tier.peers, tier.states[tier.position], strict=True):
        peer.current_weight = weight
    tier.schedule = None
    tier.states = []


def _ip_hash_bytes(key: bytes) -> bytes:
    if len(key) == 4:
        # IPv4: the /24 network, so one client keeps its server across NAT pools.
        return key[:3]
    if not key:
        # A Unix socket client: nginx hashes a fixed pseudo address.
        return b"\0\0\0"
    return key


class IpHash(Balancer):
    """``ip_hash``: the client address picks the server, as in nginx.

    The hash covers the first three bytes of an IPv4 address (clients of one /24 share a
    server) or all sixteen bytes of an IPv6 address: starting from 89, each byte does
    ``hash = (hash * 113 + byte) % 6271``, and ``hash % total_weight`` walks the servers in
    config order by weight. If that server is down, taken out or already tried, the hash
    goes round again over the same bytes; after 20 tries the request falls back to round
    robin. Server positions count down servers too, so marking a server ``down`` moves only
    its own clients.
    """

    __slots__ = ()
    method = "ip_hash"

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        data = _ip_hash_bytes(key)
        total = tier.total_weight
        h = 89
        for _ in range(HASH_TRIES):
            for byte in data:
                h = (h * 113 + byte) % 6271
            peer = tier.peer_at(h % total)
            if _usable(peer, now, tried):
                return peer
        return _smooth_weighted(tier.peers, now, tried)


class Hash(Balancer):
    """``hash KEY``: the evaluated key picks the server, as in nginx (and Cache::Memcached).

    Try *n* (from 0) computes ``(crc32(REHASH + key) >> 16) & 0x7fff``, where ``REHASH`` is
    the decimal *n* and is left out on try 0, and adds it to a running sum; ``sum %
    total_weight`` walks the servers in config order by weight. A down, taken out or tried
    server moves on to the next try; after 20 tries the request falls back to round robin.
    Adding or removing a server remaps most keys; use ``hash_consistent`` where that
    matters.
    """

    __slots__ = ()
    method = "hash"

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        total = tier.total_weight
        running = 0
        for rehash in range(HASH_TRIES):
            prefix = b"%d" % rehash if rehash else b""
            running += (zlib.crc32(prefix + key) >> 16) & 0x7FFF
            peer = tier.peer_at(running % total)
            if _usable(peer, now, tried):
                return peer
        return _smooth_weighted(tier.peers, now, tried)


def _ring_name(address: str) -> bytes:
    """nginx's ring name for a server: ``host \\0 port`` (Cache::Memcached::Fast style)."""
    raw = address.encode()
    if raw[:5].lower() == b"unix:":
        return raw[5:] + b"\0"
    host, sep, port = raw.rpartition(b":")
    if sep and (port.isdigit() or not port):
        return host + b"\0" + port
    return raw + b"\0"


class _Ring:
    """The ketama ring of one tier: sorted point hashes and the address owning each."""

    __slots__ = ("addresses", "by_address", "hashes")

    def __init__(self, peers: list[Peer]) -> None:
        points: dict[int, str] = {}
        self.by_address: dict[str, list[Peer]] = {}
        for peer in peers:
            address = peer.spec.address
            self.by_address.setdefault(address, []).append(peer)
            base = zlib.crc32(_ring_name(address))
            prev = 0
            for _ in range(RING_POINTS_PER_WEIGHT * peer.spec.weight):
                # Each point hashes the name followed by the previous point's hash (4 bytes,
                # little-endian), continuing the name's CRC as nginx does.
                prev = zlib.crc32(prev.to_bytes(4, "little"), base)
                # On a collision the earlier server in config order keeps the point, so the
                # ring does not depend on sort stability.
                points.setdefault(prev, address)
        self.hashes = sorted(points)
        self.addresses = [points[h] for h in self.hashes]


class ConsistentHash(Balancer):
    """``hash KEY consistent``: ketama consistent hashing, as in nginx.

    Each server owns ``160 * weight`` points on a ring of 32-bit hashes, placed by its
    address (``crc32`` of ``host``, a zero byte, ``port`` and the previous point's hash).
    A request goes to the first point at or after ``crc32(key)``, wrapping round; when that
    server is down, taken out or tried, the walk goes on along the ring to the next server.
    Adding or removing one of *N* servers moves only about 1/*N* of the keys, and only
    those of that server.
    """

    __slots__ = ()
    method = "hash_consistent"

    def _make_tier(self, peers: list[Peer]) -> _Tier:
        return _Tier(peers, _Ring(peers))

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        ring = tier.ring
        assert ring is not None, "ConsistentHash builds a ring for every tier"
        n = len(ring.hashes)
        start = bisect.bisect_left(ring.hashes, zlib.crc32(key))
        rejected: set[str] = set()
        for step in range(n):
            address = ring.addresses[(start + step) % n]
            if address in rejected:
                continue
            same = [p for p in ring.by_address[address] if _usable(p, now, tried)]
            if same:
                # Two servers with one address (nginx: a name resolving to it twice) share
                # its points by weight.
                return same[0] if len(same) == 1 else _smooth_weighted(same, now, tried)
            rejected.add(address)
            if len(rejected) == len(ring.by_address):
                break
        return None


class LeastConn(Balancer):
    """``least_conn``: the server with the fewest active requests for its weight (nginx).

    Servers compare by ``active / weight`` (a server of weight 2 takes twice the
    connections of a server of weight 1 before it counts as busier); among equals, smooth
    weighted round robin decides, so idle servers still share by weight.
    """

    __slots__ = ()
    method = "least_conn"

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        best: list[Peer] = []
        for peer in tier.peers:
            if not _usable(peer, now, tried):
                continue
            if not best:
                best = [peer]
                continue
            first = best[0]
            # Cross-multiplied to stay in integers: active_a/weight_a vs active_b/weight_b.
            lhs = peer.active * first.spec.weight
            rhs = first.active * peer.spec.weight
            if lhs < rhs:
                best = [peer]
            elif lhs == rhs:
                best.append(peer)
        if len(best) <= 1:
            return best[0] if best else None
        return _smooth_weighted(best, now, tried)


class Random(Balancer):
    """``random``: a server at random, with probability proportional to its weight.

    The draw is among the servers usable for this attempt, so a down or taken out server
    shifts its share to the others in proportion to their weights.
    """

    __slots__ = ()
    method = "random"

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        usable = tier.usable(now, tried)
        return _weighted_random(usable, self._rng) if usable else None


class RandomTwo(Balancer):
    """``random two``: the less loaded of two servers drawn at random (nginx ``random two``).

    Two different servers are drawn by weight among the usable ones, and the one with fewer
    active requests for its weight (``active / weight``, as ``least_conn`` compares) wins;
    on a tie, the first drawn. With a single usable server, that server. This is the power
    of two choices: nearly as even as least_conn, without every worker herding onto the
    same idle server.
    """

    __slots__ = ()
    method = "random_two"

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        usable = tier.usable(now, tried)
        if len(usable) <= 1:
            return usable[0] if usable else None
        first = _weighted_random(usable, self._rng)
        usable.remove(first)
        second = _weighted_random(usable, self._rng)
        # Ties go to the first draw, which was made by weight, so idle servers share by
        # weight. (nginx keeps the second draw on ties, which with two idle servers hands
        # each one the other's share.)
        if second.active * first.spec.weight < first.active * second.spec.weight:
            return second
        return first


class Fair(Balancer):
    """``fair`` (portico's own): more requests to the servers that answer faster.

    Each server keeps a moving average of its response time: every finished attempt of
    ``elapsed`` seconds updates it as ``avg = 0.3 * elapsed + 0.7 * avg``; the first
    measurement sets it directly. A failed attempt counts as ``max(elapsed, avg)``, so
    failing fast never makes a server look faster. An average not refreshed for a while
    loses weight: it counts for half after 10 seconds without a response, a quarter after
    20, and so on, so a server left idle is eventually tried again and can win its share
    back once it is fast.

    To pick, two different servers are drawn uniformly at random among the usable ones and
    the one with the lower score ``avg * (active + 1) / weight`` wins (the first drawn, on
    a tie). With a single usable server, that server. A server never measured scores 0, so
    a new server wins every draw it is part of until its first answer arrives: it is tried
    at once, yet gets only about twice its even share meanwhile, never the whole load.
    """

    __slots__ = ()
    method = "fair"
    observes = True

    def _average(self, peer: Peer, now: float) -> float:
        if not peer.measured:
            return 0.0
        age = max(0.0, now - peer.response_time_at)
        return peer.response_time * math.exp2(-age / FAIR_HALF_LIFE)

    def _score(self, peer: Peer, now: float) -> float:
        return self._average(peer, now) * (peer.active + 1) / peer.spec.weight

    def _choose(self, tier: _Tier, key: bytes, tried: Collection[Peer], now: float) -> Peer | None:
        usable = tier.usable(now, tried)
        if len(usable) <= 1:
            return usable[0] if usable else None
        i = self._rng.randrange(len(usable))
        j = self._rng.randrange(len(usable) - 1)
        if j >= i:
            j += 1
        a, b = usable[i], usable[j]
        return b if self._score(b, now) < self._score(a, now) else a

    def _observe(self, peer: Peer, elapsed: float, failed: bool, now: float) -> None:
        elapsed = max(0.0, elapsed)
        if not peer.measured:
            peer.response_time = elapsed
            peer.measured = True
        else:
            average = self._average(peer, now)
            if failed:
                elapsed = max(elapsed, average)
            peer.response_time = FAIR_ALPHA * elapsed + (1.0 - FAIR_ALPHA) * average
        peer.response_time_at = now


_BALANCERS: dict[str, type[Balancer]] = {
    cls.method: cls
    for cls in (RoundRobin, IpHash, Hash, ConsistentHash, Fair, LeastConn, Random, RandomTwo)
}

#: Every method name :func:`make_balancer` accepts.
METHODS: tuple[str, ...] = tuple(_BALANCERS)


def make_balancer(
    method: str,
    specs: Sequence[PeerSpec],
    clock: Callable[[], float],
    rng: random.Random,
) -> Balancer:
    """Build the balancer for one upstream group in one worker.

    ``method`` is one of :data:`METHODS`; ``clock`` returns the current time in seconds
    (monotonic in production); ``rng`` is the random source of the ``random``, ``random_two``
    and ``fair`` methods. Raises :class:`ValueError` for an unknown method or a group with
    no primary server.
    """
    try:
        cls = _BALANCERS[method]
    except KeyError:
        known = ", ".join(METHODS)
        raise ValueError(f"unknown load balancing method {method!r} (known: {known})") from None
    return cls(specs, clock, rng)
