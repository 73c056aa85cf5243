"""Reviewer scratch: an exception half-way through a wake-up's _answer."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace as NS
from typing import Any

import pytest

from waypost.api import fastpath
from waypost.api.fanout import FanOut
from waypost.api.wheel import TimerWheel


class Prep:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closing = True


def cycle(gzip: bool = False) -> Any:
    return NS(
        scope={"headers": []}, transport=Transport(), disconnected=False, keep_alive=True,
        default_headers=[], response_started=False, response_complete=False,
        waiting_for_100_continue=False, message_event=asyncio.Event(), on_response=lambda: None,
    )


def test_exception_in_second_group_leaves_first_written_and_parked() -> None:
    loop = asyncio.new_event_loop()
    try:
        fr = fastpath.FastReads.__new__(fastpath.FastReads)
        fr.loop = loop
        fr.store = NS(health=lambda: "ok")
        fr.fanout = FanOut(threads=1)
        fr.app = NS(metrics=NS(observe=lambda *a: None))
        fr.catalog = NS(parked=0)
        fr._topics, fr._listening = {}, {}
        fr.answered = 0
        fut: asyncio.Future[None] = loop.create_future()
        fr.watches = NS(listen=lambda t: fut, unlisten=lambda t: None, closed=False)
        fr._wheel = TimerWheel(loop, fr._expired)
        fr._would_block = lambda topics, idx: False  # the change passed the index
        prep_a = Prep(plan=(("T",), None), group=("GET", "/a", ()), min_index=1)
        prep_b = Prep(plan=(("T",), None), group=("GET", "/b", ()), min_index=1)
        qa = fastpath._Query(cycle(), prep_a, NS(authz=None), -1)
        qb = fastpath._Query(cycle(), prep_b, NS(authz=None), -1)
        for q in (qa, qb):
            q.slot = fr._wheel.add(q, loop.time() + 0.1)
            fr._park(q)
            fr.catalog.parked += 1
        pre = fastpath._Prebuilt(0, 0, "ok", [], b"ANSWER", 200)

        def prebuilt_for(query: Any, key: Any, health: Any) -> Any:
            if query is qb:
                raise RuntimeError("boom")  # e.g. the executor refusing a gzip job
            return pre

        fr._prebuilt_for = prebuilt_for
        # whichever group comes first, make the raising one come second
        lines = fr._topics["T"]
        fr._topics["T"] = {prep_a: lines[prep_a], prep_b: lines[prep_b]}
        with pytest.raises(RuntimeError):
            fr._fired("T", fut)
        assert qa.cycle.transport.writes == [b"ANSWER"]  # written ...
        print("qa.slot after failed wake-up:", qa.slot, "response_complete:", qa.cycle.response_complete)
        fr._prebuilt_for = lambda q, k, h: pre
        loop.run_until_complete(asyncio.sleep(0.3))  # the wheel expires it
        print("writes on qa's connection:", qa.cycle.transport.writes, "parked:", fr.catalog.parked)
        assert qa.cycle.transport.writes == [b"ANSWER"], "answered twice"
    finally:
        loop.close()
