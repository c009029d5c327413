"""The deadline wheel: each due item fires once, never early, and moving later is free."""

from __future__ import annotations

import math

from portico.timeouts import Wheel


class Item:
    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.wheel_slot = 0
        self.wheel_start = math.inf
        self.fired: list[float] = []
        self.now = 0.0

    def on_timeout(self) -> None:
        self.fired.append(self.now)


def run(wheel: Wheel, items: list[Item], until: float, step: float = 0.05) -> None:
    t = 0.0
    while t <= until:
        for item in items:
            item.now = t
        wheel.expire(t)
        t = round(t + step, 10)


def test_fires_once_not_early_not_much_late() -> None:
    wheel = Wheel(0.25)
    item = Item(1.0)
    wheel.watch(item)
    run(wheel, [item], 3.0)
    assert len(item.fired) == 1
    assert 1.0 <= item.fired[0] <= 1.0 + 0.25 + 0.05


def test_moving_later_needs_no_new_entry() -> None:
    wheel = Wheel(0.25)
    item = Item(1.0)
    wheel.watch(item)
    item.deadline = 2.0  # later: just an attribute
    assert len(wheel) == 1
    run(wheel, [item], 3.0)
    assert len(item.fired) == 1 and item.fired[0] >= 2.0


def test_moving_earlier_files_again() -> None:
    wheel = Wheel(0.25)
    item = Item(5.0)
    wheel.watch(item)
    item.deadline = 1.0
    wheel.watch(item)
    run(wheel, [item], 6.0)
    assert len(item.fired) == 1 and 1.0 <= item.fired[0] < 1.5


def test_set_deadline_refiles_only_when_earlier() -> None:
    wheel = Wheel(0.25)
    item = Item(None)
    wheel.set_deadline(item, 5.0)
    wheel.set_deadline(item, 6.0)  # later: no second entry
    assert len(wheel) == 1
    wheel.set_deadline(item, 1.0)  # earlier: filed again
    assert len(wheel) == 2
    run(wheel, [item], 7.0)
    assert len(item.fired) == 1 and 1.0 <= item.fired[0] < 1.5


def test_cleared_deadline_never_fires() -> None:
    wheel = Wheel(0.25)
    item = Item(1.0)
    wheel.watch(item)
    item.deadline = None
    run(wheel, [item], 3.0)
    assert item.fired == []
    assert len(wheel) == 0


def test_many_items() -> None:
    wheel = Wheel(0.25)
    items = [Item(i * 0.1) for i in range(100)]
    for item in items:
        wheel.watch(item)
    run(wheel, items, 11.0)
    for item in items:
        assert len(item.fired) == 1
        assert item.deadline is not None
        assert item.deadline <= item.fired[0] <= item.deadline + 0.3
