"""A wake-up of the fast path (api/fastpath.py) that fails half-way.

The failure cannot be caused from outside an agent (it takes a bug, or an
executor refusing a compression job), so the FastReads here is built around
stand-ins: two parked queries on one topic, in two answer groups, and an
answer builder that raises for the second. What was written must stay
written once: the first query leaves the wheel at once, so that the end of
its wait cannot answer it a second time on the same connection (the client
would take that answer for its next request's), and the second, never
answered, still gets its answer when its wait ends.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from waypost.api import fastpath
from waypost.api.fanout import FanOut
from waypost.api.wheel import TimerWheel


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class Line:
    """A parked request line (fastpath._Prepared's parts used here); hashable."""

    def __init__(self, path: str) -> None:
        self.plan = (("T",), None)
        self.group = ("GET", path, ())
        self.min_index = 1


def cycle() -> Any:
    return SimpleNamespace(
        scope={"headers": []}, transport=Transport(), disconnected=False, keep_alive=True,
        default_headers=[], response_started=False, response_complete=False,
        waiting_for_100_continue=False, message_event=asyncio.Event(), on_response=lambda: None,
    )  # fmt: skip


def test_a_wake_up_failing_half_way_answers_no_query_twice() -> None:
    loop = asyncio.new_event_loop()
    try:
        fast = fastpath.FastReads.__new__(fastpath.FastReads)  # its parts, stood in below
        fired: asyncio.Future[None] = loop.create_future()
        fast.loop, fast.answered = loop, 0
        fast.store = SimpleNamespace(health=lambda: "ok")
        fast.fanout = FanOut(threads=1)
        fast.app = SimpleNamespace(metrics=SimpleNamespace(observe=lambda *_: None))
        fast.catalog = SimpleNamespace(parked=0)
        fast.watches = SimpleNamespace(listen=lambda _: fired, unlisten=lambda _: None)
        fast._topics, fast._listening = {}, {}
        fast._wheel = TimerWheel(loop, fast._expired)
        fast._would_block = lambda *_: False  # the change passed every query's index
        lines = [Line("/first"), Line("/second")]
        first, second = (
            fastpath._Query(cycle(), line, SimpleNamespace(authz=None), -1) for line in lines
        )
        for query in (first, second):
            query.slot = fast._wheel.add(query, loop.time() + 0.1)
            fast._park(query)
            fast.catalog.parked += 1
        fast._topics["T"] = {line: fast._topics["T"][line] for line in lines}  # first, then second
        answer = fastpath._Prebuilt(0, 0, "ok", [], b"ANSWER", 200)

        def failing(query: Any, key: Any, health: Any) -> Any:
            if query is second:
                raise RuntimeError("the answer could not be built")
            return answer

        fast._prebuilt_for = failing
        with pytest.raises(RuntimeError):
            fast._fired("T", fired)
        assert first.cycle.transport.writes == [b"ANSWER"]
        assert second.cycle.transport.writes == []
        fast._prebuilt_for = lambda *_: answer
        loop.run_until_complete(asyncio.sleep(0.3))  # past both waits: the wheel ends them
        assert first.cycle.transport.writes == [b"ANSWER"]  # not a second time
        assert second.cycle.transport.writes == [b"ANSWER"]
        assert fast.catalog.parked == 0
    finally:
        loop.close()
