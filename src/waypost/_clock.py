"""The clock seam: the system clock, and a fake one that moves only when told to.

    Clock        what a component needs: now() (monotonic seconds), async sleep()
    SystemClock  time.monotonic() and asyncio.sleep(); MONOTONIC is the shared one
    FakeClock    for tests; advance() moves it

The health runner sleeps on its clock (TTL deadlines, intervals, the reaper);
the client library only reads it (breakers, balancers, caches, the retry
budget). One FakeClock serves both, because `advance(dt)` works both ways:

    clock.advance(5)         time moves now; nothing else happens (sync tests)
    await clock.advance(5)   time moves the same, but in steps: every sleeper
                             whose deadline falls inside the 5 s wakes in
                             deadline order, sees its own deadline as now(),
                             and runs until it blocks again, as it would have
                             in real time. Tasks started just before the call
                             first get to reach their first sleep.

Awaiting replays the interval from where the call found the clock, so the
one extra step costs nothing: between a call and its `await` no task runs.

A top-level private module: any layer may import it; it imports no package.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Generator
from typing import Any, Protocol


class Clock(Protocol):
    """A monotonic time source in seconds; injectable so tests need no real sleep()."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.monotonic()` and `asyncio.sleep()`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


MonotonicClock = SystemClock  # the client library's public name for it
MONOTONIC = SystemClock()


class FakeClock:
    """A clock that only moves when told to, for deterministic tests.

    Args:
        start: The time `now()` reports until the first `advance()`.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Return once `advance()` has moved the clock `seconds` past now."""
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> Advance:
        """Move time forward by `seconds`; await the result to wake the sleepers too.

        Raises:
            ValueError: `seconds` is negative.
        """
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        origin = self._now
        self._now += seconds
        return Advance(self, origin, self._now)

    async def _replay(self, origin: float, target: float) -> None:
        if self._now == target:
            self._now = origin  # nothing has run since advance(): step through it
        target = max(target, self._now)
        await _settle()  # let freshly started tasks reach their first sleep
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
            await _settle()
        self._now = target
        await _settle()


class Advance:
    """What `FakeClock.advance()` returns: the move is done; awaiting it wakes sleepers."""

    __slots__ = ("_clock", "_origin", "_target")

    def __init__(self, clock: FakeClock, origin: float, target: float) -> None:
        self._clock = clock
        self._origin = origin
        self._target = target

    def __await__(self) -> Generator[Any, None, None]:
        return self._clock._replay(self._origin, self._target).__await__()


async def _settle() -> None:
    """Let woken tasks run until they block again (bounded: a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)
