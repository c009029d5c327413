"""Deadlines for many connections without a timer object per connection.

A connection keeps its deadline in a float attribute and is filed in a bucket of a
coarse wheel (``resolution`` seconds wide). Moving a deadline later, which is what
every request on a keep-alive connection does, costs one attribute store: the entry
stays in its earlier bucket and is re-filed only when that bucket comes due. Moving it
earlier files it again in the earlier bucket and the old entry goes stale (a stale
entry is recognised by ``wheel_slot`` no longer naming its bucket).

Rules (the invariant the code keeps):

- ``item.wheel_slot`` is 0 when the item is filed nowhere, else the bucket that holds
  its live entry, which is never later than the bucket of ``item.deadline``;
  ``item.wheel_start`` is the first time that bucket holds (+inf when filed nowhere),
  so that a new deadline is checked against it with one compare;
- ``expire(now)`` calls ``item.on_timeout()`` exactly once for each item whose deadline
  is due, and only if the deadline is still set (None means no timeout).

Pure: the caller passes the time in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol


class Timed(Protocol):
    deadline: float | None
    wheel_slot: int
    wheel_start: float

    def on_timeout(self) -> None: ...


def _raise(error: Exception) -> None:
    raise error


class Wheel:
    __slots__ = ("_buckets", "_next", "on_error", "resolution")

    def __init__(
        self,
        resolution: float = 0.25,
        now: float = 0.0,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.resolution = resolution
        self.on_error = on_error or _raise
        self._buckets: dict[int, list[Timed]] = {}
        self._next = int(now / resolution)

    def set_deadline(self, item: Timed, deadline: float) -> None:
        """Give ``item`` a new deadline. It is filed again only when the new one comes
        before the bucket it waits in; a later one is found there and refiled then."""
        item.deadline = deadline
        if deadline < item.wheel_start:
            self.watch(item)

    def watch(self, item: Timed) -> None:
        """File ``item`` by its current deadline (call after setting an earlier one)."""
        deadline = item.deadline
        if deadline is None:
            return
        slot = max(int(deadline / self.resolution) + 1, self._next)
        if item.wheel_slot == 0 or slot < item.wheel_slot:
            item.wheel_slot = slot
            item.wheel_start = (slot - 1) * self.resolution
            bucket = self._buckets.get(slot)
            if bucket is None:
                self._buckets[slot] = [item]
            else:
                bucket.append(item)

    def expire(self, now: float) -> None:
        current = int(now / self.resolution)
        buckets = self._buckets
        while self._next <= current:
            slot = self._next
            self._next += 1
            due = buckets.pop(slot, None)
            if not due:
                continue
            for item in due:
                if item.wheel_slot != slot:
                    continue  # stale: filed again in an earlier bucket
                item.wheel_slot = 0
                item.wheel_start = math.inf
                deadline = item.deadline
                if deadline is None:
                    continue
                if deadline <= now:
                    try:
                        item.on_timeout()
                    except Exception as error:  # one broken item must not stop the wheel
                        self.on_error(error)
                else:
                    self.watch(item)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())
