"""The one FakeClock: advance() for readers (sync) and for sleepers (awaited)."""

from __future__ import annotations

import asyncio

import pytest

from waypost import _clock
from waypost.client import FakeClock as ClientFakeClock
from waypost.health import FakeClock as HealthFakeClock


def test_one_clock_everywhere() -> None:
    assert ClientFakeClock is HealthFakeClock is _clock.FakeClock


def test_advance_moves_time_at_once_without_an_event_loop() -> None:
    clock = _clock.FakeClock(0.0)
    clock.advance(5)
    clock.advance(0.5)
    assert clock.now() == 5.5
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_awaited_advance_wakes_sleepers_in_deadline_order_at_their_deadlines() -> None:
    clock = _clock.FakeClock(100.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [
        asyncio.create_task(sleeper(n, s)) for n, s in (("late", 7), ("early", 2), ("out", 20))
    ]
    await clock.advance(10)  # the tasks have not run yet: they still sleep from t=100
    assert woke == [("early", 102.0), ("late", 107.0)]
    assert clock.now() == 110.0
    await clock.advance(10)
    assert woke[-1] == ("out", 120.0)
    await asyncio.gather(*tasks)


async def test_a_periodic_sleeper_runs_once_per_period_inside_one_advance() -> None:
    clock = _clock.FakeClock(0.0)
    ticks: list[float] = []

    async def every_second() -> None:
        while True:
            await clock.sleep(1)
            ticks.append(clock.now())

    task = asyncio.create_task(every_second())
    await clock.advance(3.5)
    assert ticks == [1.0, 2.0, 3.0]
    task.cancel()


async def test_awaiting_a_stale_advance_never_moves_time_back() -> None:
    clock = _clock.FakeClock(0.0)
    first = clock.advance(1)
    clock.advance(4)
    await first
    assert clock.now() == 5.0


async def test_system_clock_sleeps_for_real() -> None:
    clock = _clock.SystemClock()
    before = clock.now()
    await clock.sleep(0.01)
    assert clock.now() >= before + 0.01
