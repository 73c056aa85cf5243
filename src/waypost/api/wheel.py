"""The fast path's timer wheel (api/fastpath.py): parked queries' `wait=`
deadlines in buckets of TICK seconds, one loop timer for the earliest bucket
instead of one per parked query."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

TICK = 0.05  # the timer wheel's resolution: `wait=` ends up to 50 ms late
T = TypeVar("T")


class TimerWheel(Generic[T]):
    """Deadlines rounded up to TICK seconds, in buckets: one loop timer for the
    earliest bucket instead of one per parked query."""

    def __init__(self, loop: Any, expire: Callable[[T], None]) -> None:
        self.loop = loop
        self.expire = expire
        self._buckets: dict[int, set[T]] = {}
        self._slots: list[int] = []  # a heap of the buckets' slots
        self._armed: tuple[int, Any] | None = None  # (slot, TimerHandle)

    def add(self, item: T, deadline: float) -> int:
        slot = math.ceil(deadline / TICK)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
            heapq.heappush(self._slots, slot)
            if self._armed is None or slot < self._armed[0]:
                self._arm(slot)
        bucket.add(item)
        return slot

    def remove(self, item: T, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(item)  # an empty bucket goes when its time comes

    def _arm(self, slot: int) -> None:
        if self._armed is not None:
            self._armed[1].cancel()
        self._armed = (slot, self.loop.call_at(slot * TICK, self._tick))

    def _tick(self) -> None:
        self._armed = None
        now = self.loop.time()
        while self._slots and self._slots[0] * TICK <= now:
            bucket = self._buckets.pop(heapq.heappop(self._slots))
            for item in list(bucket):
                self.expire(item)
        # expire() may have added (a pipelined query parked): arm for the earliest.
        if self._slots and (self._armed is None or self._slots[0] < self._armed[0]):
            self._arm(self._slots[0])

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())
