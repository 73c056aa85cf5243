"""The fast path's timer wheel (api/wheel.py TimerWheel), on a fake loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from waypost.api.wheel import TICK, TimerWheel


class FakeLoop:
    """`time()` and `call_at()`, moved by hand: runs the earliest timer."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[list[Any]] = []  # [when, callback, cancelled]

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        timer = [when, callback, False]
        self.timers.append(timer)

        class Handle:
            def cancel(self) -> None:
                timer[2] = True

        return Handle()

    def run_next(self) -> None:
        live = sorted((t for t in self.timers if not t[2]), key=lambda t: t[0])
        timer = live[0]
        self.timers.remove(timer)
        self.now = max(self.now, timer[0])
        timer[1]()


def test_an_item_added_while_expiring_does_not_postpone_earlier_deadlines() -> None:
    """A pipelined query parks while the one before it expires: the wheel
    must still wake for the other deadlines first."""
    loop = FakeLoop()
    expired: dict[str, float] = {}

    def expire(item: str) -> None:
        expired[item] = loop.now
        if item == "A":
            wheel.add("C", loop.now + 3.0)

    wheel: TimerWheel[str] = TimerWheel(loop, expire)
    wheel.add("A", 0.1)
    wheel.add("B", 0.3)
    while len(expired) < 3:
        loop.run_next()
    assert expired["A"] <= 0.1 + TICK
    assert expired["B"] <= 0.3 + TICK  # not at C's 3.1 s
    assert expired["C"] >= 3.1
