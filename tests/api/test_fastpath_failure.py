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
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from waypost.api import fanout, fastpath
from waypost.api.fanout import FanOut
from waypost.api.wheel import TimerWheel


class Transport:
    def __init__(
        self,
        closing: bool = False,
        gate: Callable[[], None] = lambda: None,
        buffer_gate: Callable[[], None] = lambda: None,
    ) -> None:
        self.writes: list[bytes] = []
        self.closing = closing
        self.gate = gate  # called before each write: may raise (a bug's stand-in)
        self.buffer_gate = buffer_gate  # the same, before each write buffer check

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        self.buffer_gate()
        return 0

    def write(self, data: bytes) -> None:
        self.gate()
        self.writes.append(data)


class Line:
    """A parked request line (fastpath._Prepared's parts used here); hashable."""

    def __init__(self, path: str) -> None:
        self.plan = (("T",), None)
        self.group = ("GET", path, ())
        self.min_index = 1


def cycle(transport: Transport | None = None, defaults: list[Any] | None = None) -> Any:
    return SimpleNamespace(
        scope={"headers": []}, transport=transport or Transport(), disconnected=False, keep_alive=True,
        default_headers=[] if defaults is None else defaults, response_started=False, response_complete=False,
        waiting_for_100_continue=False, message_event=asyncio.Event(), on_response=lambda: None,
    )  # fmt: skip


class Soon:
    """The loop, but what is handed to call_soon waits in `soon` (`wake` runs it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.soon: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        self.soon.append((callback, args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


def stand_ins(loop: asyncio.AbstractEventLoop) -> tuple[Any, asyncio.Future[None]]:
    """A FastReads of stand-ins around its wake-up (`_fired`, `_answer`,
    `_write`, the wheel), and the topic's future that fires it."""
    fast = fastpath.FastReads.__new__(fastpath.FastReads)
    fired: asyncio.Future[None] = loop.create_future()
    fast.loop, fast.answered = Soon(loop), 0
    fast.store = SimpleNamespace(health=lambda: "ok")
    fast.fanout = FanOut(threads=1)
    fast.app = SimpleNamespace(metrics=SimpleNamespace(observe=lambda *_: None))
    fast.catalog = SimpleNamespace(parked=0)
    fast.watches = SimpleNamespace(listen=lambda _: fired, unlisten=lambda _: None)
    fast._topics, fast._listening = {}, {}
    fast._wheel = TimerWheel(loop, fast._expired)
    fast._would_block = lambda *_: False  # the change passed every query's index
    return fast, fired


def wake(fast: Any, fired: asyncio.Future[None], topic: str = "T") -> None:
    """The topic fires: `_fired` answers a few queries at once, and schedules
    the answers of DEFER_MIN or more (the write that fired it is
    acknowledged first), which then run here, their errors raised."""
    fast._fired(topic, fired)
    while fast.loop.soon:
        callback, args = fast.loop.soon.pop(0)
        callback(*args)


def test_a_wake_up_failing_half_way_answers_no_query_twice() -> None:
    loop = asyncio.new_event_loop()
    try:
        fast, fired = stand_ins(loop)
        lines = [Line("/first"), Line("/second")]
        first, second = (
            fastpath._Query(cycle(), line, SimpleNamespace(authz=None), -1) for line in lines
        )
        for query in (first, second):
            query.slot = fast._wheel.add(query, loop.time() + 0.1)
            fast._park(query)
            fast.catalog.parked += 1
        fast._topics["T"] = {line: fast._topics["T"][line] for line in lines}  # first, then second
        answer = fastpath._Prebuilt(fastpath._Stamp(0, 0, 0, "ok"), [], b"ANSWER", 200)

        def failing(query: Any, key: Any, health: Any) -> Any:
            if query is second:
                raise RuntimeError("the answer could not be built")
            return answer

        fast._prebuilt_for = failing
        with pytest.raises(RuntimeError):
            wake(fast, fired)
        assert first.cycle.transport.writes == [b"ANSWER"]
        assert second.cycle.transport.writes == []
        fast._prebuilt_for = lambda *_: answer
        loop.run_until_complete(asyncio.sleep(0.3))  # past both waits: the wheel ends them
        assert first.cycle.transport.writes == [b"ANSWER"]  # not a second time
        assert second.cycle.transport.writes == [b"ANSWER"]
        assert fast.catalog.parked == 0
    finally:
        loop.close()


ANSWER = fastpath._Prebuilt(fastpath._Stamp(0, 0, 0, "ok"), [], b"ANSWER", 200)


def parked_on_one_line(loop: asyncio.AbstractEventLoop, transports: list[Transport]) -> Any:
    """A FastReads of stand-ins with one parked query per transport, all on
    one request line and one answer (one group): (fast, fired, queries)."""
    fast, fired = stand_ins(loop)
    fast._prebuilt_for = lambda *_: ANSWER
    line, defaults = Line("/one"), []  # one Date list: came in the same second, one group
    queries = [
        fastpath._Query(cycle(t, defaults), line, SimpleNamespace(authz=None), -1)
        for t in transports
    ]
    assert len({q.seen for q in queries}) == 1
    for query in queries:
        query.slot = fast._wheel.add(query, loop.time() + 0.1)
        fast._park(query)
        fast.catalog.parked += 1
    return fast, fired, queries


def test_a_wake_up_failing_inside_a_group_answers_no_query_twice() -> None:
    """The group's answer written before the failure counts as given: its
    query's cycle is finished and it leaves the wheel; the one whose write
    failed, and the one after it, stay parked and are answered when their
    waits end (the transport works again)."""
    loop = asyncio.new_event_loop()
    try:
        count = 0

        def second_write_fails_once() -> None:  # whichever query the set gives second
            nonlocal count
            count += 1
            if count == 2:
                raise RuntimeError("the write failed")

        transports = [Transport(gate=second_write_fails_once) for _ in range(3)]
        fast, fired, queries = parked_on_one_line(loop, transports)
        with pytest.raises(RuntimeError, match="the write failed"):
            wake(fast, fired)
        assert sorted(len(t.writes) for t in transports) == [0, 0, 1]
        for query in queries:  # an answer written is a response complete (its cycle finished)
            assert query.cycle.response_complete == bool(query.transport.writes)
            assert bool(query.slot) == (not query.transport.writes)  # the others still parked
        loop.run_until_complete(asyncio.sleep(0.3))  # past every wait: the wheel ends them
        assert [t.writes for t in transports] == [[b"ANSWER"]] * 3  # each once
        assert fast.answered == 3 and fast.catalog.parked == 0
    finally:
        loop.close()


def test_a_closing_connection_gets_no_answer() -> None:
    """A transport that is closing (its connection_lost has not run yet) is
    skipped, and only the others count as answered."""
    loop = asyncio.new_event_loop()
    try:
        transports = [Transport(), Transport(closing=True), Transport()]
        fast, fired, _ = parked_on_one_line(loop, transports)
        fast._fired("T", fired)  # a few: answered at once, nothing scheduled
        assert fast.loop.soon == []
        assert [t.writes for t in transports] == [[b"ANSWER"], [], [b"ANSWER"]]
        assert fast.answered == 2 and fast.catalog.parked == 0
    finally:
        loop.close()


def test_a_wake_up_failing_inside_a_group_of_a_batch_answers_no_query_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on the batch path (two threads, answers written beside the
    transports on their sockets): the answer filed before the failure is sent
    on its socket once; the others are answered when their waits end."""
    monkeypatch.setattr(fastpath, "PARALLEL_MIN", 2)
    monkeypatch.setattr(fanout, "PARALLEL_MIN", 2)
    loop = asyncio.new_event_loop()
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        count = 0

        def second_check_fails_once() -> None:
            nonlocal count
            count += 1
            if count == 2:
                raise RuntimeError("the check failed")

        transports = [Transport(buffer_gate=second_check_fails_once) for _ in pairs]
        fast, fired, queries = parked_on_one_line(loop, transports)
        fast.fanout = FanOut(threads=2)
        for query, (mine, _) in zip(queries, pairs, strict=True):
            query.fd = mine.fileno()
        with pytest.raises(RuntimeError, match="the check failed"):
            wake(fast, fired)
        sent = {}
        for query, (_, theirs) in zip(queries, pairs, strict=True):
            theirs.setblocking(False)
            try:
                sent[id(query)] = theirs.recv(100)
            except BlockingIOError:
                sent[id(query)] = b""
        assert sorted(sent.values()) == [b"", b"", b"ANSWER"]
        for query in queries:  # the one sent: finished and out of the wheel; the others parked
            answered = sent[id(query)] == b"ANSWER"
            assert query.cycle.response_complete == answered and bool(query.slot) != answered
        loop.run_until_complete(asyncio.sleep(0.3))  # their waits end: each answered once
        for query in queries:  # a single answer goes through its transport
            assert query.transport.writes == ([] if sent[id(query)] else [b"ANSWER"])
        assert fast.answered == 3 and fast.catalog.parked == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        loop.close()


def test_queries_that_left_the_wheel_before_the_answers_get_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between `_fired` and its answers (a large wake-up's, scheduled after
    the write's own acknowledgement), a connection may close and the
    shutdown may answer another: neither is answered (again), the rest once each."""
    monkeypatch.setattr(fastpath, "DEFER_MIN", 4)
    loop = asyncio.new_event_loop()
    try:
        transports = [Transport() for _ in range(4)]
        fast, fired, queries = parked_on_one_line(loop, transports)
        fast._fired("T", fired)
        assert [t.writes for t in transports] == [[]] * 4  # nothing before the write's answer
        closed, shut_down = queries[0], queries[1]
        fast.release(closed)  # its client went away
        fast.answer_now(shut_down)  # the shutdown answered it at once
        ((callback, args),) = fast.loop.soon
        callback(*args)
        assert closed.transport.writes == []
        assert [q.transport.writes for q in queries[1:]] == [[b"ANSWER"]] * 3
        assert fast.answered == 3 and fast.catalog.parked == 0
        loop.run_until_complete(asyncio.sleep(0.3))  # past every wait: nothing more
        assert [len(t.writes) for t in transports] == [0, 1, 1, 1]
    finally:
        loop.close()


def test_a_query_on_two_topics_fired_by_one_change_is_answered_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One commit fires both topics of a query's line: each `_fired`
    schedules answers that name it (as for a large wake-up); the second finds it answered."""
    monkeypatch.setattr(fastpath, "DEFER_MIN", 1)
    loop = asyncio.new_event_loop()
    try:
        fast, fired = stand_ins(loop)
        line = Line("/two")
        line.plan = (("T", "U"), None)
        query = fastpath._Query(cycle(), line, SimpleNamespace(authz=None), -1)
        query.slot = fast._wheel.add(query, loop.time() + 0.1)
        fast._park(query)
        fast.catalog.parked += 1
        fast._prebuilt_for = lambda *_: ANSWER
        fast._fired("T", fired)
        fast._fired("U", fired)
        assert len(fast.loop.soon) == 2
        for callback, args in fast.loop.soon:
            callback(*args)
        assert query.transport.writes == [b"ANSWER"]
        assert fast.answered == 1 and fast.catalog.parked == 0
        assert fast._topics == {} and fast._listening == {}
    finally:
        loop.close()
