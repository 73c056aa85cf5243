"""The KV, session and event tables and plans, on the memory store and on sqlite."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost import ValidationError
from waypost.catalog import Catalog, kvtxn, kvwrites
from waypost.catalog.kv import key_topic, prefix_topic
from waypost.catalog.kvtxn import KvOp, TxnOp
from waypost.catalog.kvwrites import EventRequest, SessionRequest
from waypost.catalog.sessions import EVENT_SLOTS
from waypost.storage import open_storage

from ..helpers import node


async def _catalog(url: str = "memory://") -> Catalog:
    cat = Catalog(open_storage(url))
    await cat.open()
    await cat.put(node())
    return cat


async def _session(cat: Catalog, lock_delay: float = 0.0, behavior: str = "release") -> str:
    req = SessionRequest(node="n1", checks=[], lock_delay=lock_delay, behavior=behavior)
    return await cat.write(kvwrites.session_create, req, 10.0, 86400.0)


async def test_key_and_prefix_indexes_move_only_for_what_they_cover() -> None:
    cat = await _catalog()
    state = cat.state
    await cat.write(kvwrites.kv_set, "a/x", b"1")
    await cat.write(kvwrites.kv_set, "b/y", b"1")
    a_index = state.index_of([prefix_topic("a/")])
    assert state.index_of([key_topic("a/x")]) == a_index < state.index_of([prefix_topic("b/")])
    await cat.write(kvwrites.kv_set, "ab", b"1")  # shares "a" but is not under "a/"
    assert state.index_of([prefix_topic("a/")]) == a_index
    await cat.write(kvwrites.kv_delete, "a/x")
    deleted_at = state.index
    # A deletion moves the key's and its prefix's index (a tombstone), not back to 1.
    assert state.index_of([key_topic("a/x")]) == deleted_at
    assert state.index_of([prefix_topic("a/")]) == deleted_at
    assert state.kv.keys("", "/") == ["ab", "b/"]


async def test_lock_delay_starts_when_the_holding_session_goes() -> None:
    cat = await _catalog()
    slow, other = await _session(cat, lock_delay=30), await _session(cat)
    assert await cat.write(kvwrites.kv_acquire, "lock", b"x", slow)
    assert not await cat.write(kvwrites.kv_acquire, "lock", b"y", other)
    await cat.write(kvwrites.session_destroy, slow)
    assert cat.state.kv.get("lock").session == ""  # type: ignore[union-attr]
    assert cat.state.kv.lock_delay_left("lock") > 29
    assert not await cat.write(kvwrites.kv_acquire, "lock", b"y", other)
    cat.state.kv.delays["lock"] = 0.0  # the delay ran out
    assert await cat.write(kvwrites.kv_acquire, "lock", b"y", other)
    assert cat.state.kv.get("lock").lock_index == 2  # type: ignore[union-attr]


async def test_a_lock_delay_is_at_most_a_minute_as_in_consul() -> None:
    cat = await _catalog()
    slow = await _session(cat, lock_delay=70)
    await cat.write(kvwrites.kv_acquire, "lock", b"x", slow)
    await cat.write(kvwrites.session_destroy, slow)
    assert 59 < cat.state.kv.lock_delay_left("lock") <= 60


async def test_a_write_without_flags_stores_flags_0_as_consul_does() -> None:
    cat = await _catalog()
    s = await _session(cat)
    await cat.write(kvwrites.kv_set, "f", b"1", 42)
    await cat.write(kvwrites.kv_set, "f", b"2")
    assert cat.state.kv.get("f").flags == 0  # type: ignore[union-attr]
    await cat.write(kvwrites.kv_acquire, "f", b"3", s, 7)
    await cat.write(kvwrites.kv_acquire, "f", b"4", s)  # the holder again, no flags
    assert cat.state.kv.get("f").flags == 0  # type: ignore[union-attr]
    await cat.write(kvwrites.kv_set, "g", b"1", 9)
    assert cat.state.kv.get("g").flags == 9  # type: ignore[union-attr]


async def test_releasing_with_a_session_that_is_gone_is_false_not_an_error() -> None:
    cat = await _catalog()
    s = await _session(cat)
    await cat.write(kvwrites.kv_acquire, "lock", b"x", s)
    await cat.write(kvwrites.session_destroy, s)
    assert await cat.write(kvwrites.kv_release, "lock", b"x", s) is False
    with pytest.raises(ValidationError, match="Missing session"):
        await cat.write(kvwrites.kv_release, "lock", b"x", "")


async def test_a_cas_delete_of_a_key_that_is_not_there_is_true() -> None:
    cat = await _catalog()
    assert await cat.write(kvwrites.kv_delete_cas, "nothing", 5) is True
    await cat.write(kvwrites.kv_set, "k", b"1")
    assert await cat.write(kvwrites.kv_delete_cas, "k", 0) is False
    assert cat.state.kv.get("k") is not None


async def test_an_explicit_release_has_no_lock_delay() -> None:
    cat = await _catalog()
    s, other = await _session(cat, lock_delay=30), await _session(cat)
    await cat.write(kvwrites.kv_acquire, "lock", b"x", s)
    assert await cat.write(kvwrites.kv_release, "lock", b"x", s)
    assert await cat.write(kvwrites.kv_acquire, "lock", b"y", other)


async def test_acquire_re_puts_the_session_so_invalidation_cannot_miss_a_key() -> None:
    cat = await _catalog()
    s = await _session(cat, behavior="delete")
    before = cat.state.sessions.get(s).modify_index  # type: ignore[union-attr]
    await cat.write(kvwrites.kv_acquire, "k1", b"", s)
    assert cat.state.sessions.get(s).modify_index > before  # type: ignore[union-attr]
    await cat.write(kvwrites.kv_acquire, "k2", b"", s)
    assert cat.state.kv.held_by(s) == ["k1", "k2"]
    assert await cat.write(kvwrites.session_invalidate, s, None)
    assert cat.state.kv.get("k1") is None and cat.state.kv.get("k2") is None
    assert not await cat.write(kvwrites.session_invalidate, s, None)  # already gone: no-op


async def test_a_renewed_session_is_not_invalidated_by_a_stale_timer() -> None:
    cat = await _catalog()
    s = await _session(cat)
    await cat.write(kvwrites.session_renew, s)
    assert not await cat.write(kvwrites.session_invalidate, s, 0)  # the timer saw 0 renewals
    assert cat.state.sessions.get(s) is not None


async def test_txn_reads_its_own_writes_and_stages_nothing_on_error() -> None:
    cat = await _catalog()
    ops = [
        TxnOp(kv=KvOp(verb="set", key="t/a", value=b"1")),
        TxnOp(kv=KvOp(verb="get", key="t/a")),
        TxnOp(kv=KvOp(verb="check-not-exists", key="t/b")),
        TxnOp(kv=KvOp(verb="get-tree", key="t/")),
    ]
    outcome, index = await cat.write_at(kvtxn.run, ops)
    assert not outcome.errors
    shown = [(e.key, e.value, e.modify_index, v) for e, v in kvtxn.shown(outcome, index)]
    # a write shows no value; what the transaction wrote carries the commit's index
    assert shown == [("t/a", b"1", index, False)] + [("t/a", b"1", index, True)] * 2
    commits = cat.storage.statistics()["commits"]
    bad = [TxnOp(kv=KvOp(verb="delete", key="t/a")), TxnOp(kv=KvOp(verb="get", key="nope"))]
    outcome = await cat.write(kvtxn.run, bad)
    assert [(e.op_index, e.what) for e in outcome.errors] == [(1, 'key "nope" doesn\'t exist')]
    assert cat.storage.statistics()["commits"] == commits
    assert cat.state.kv.get("t/a") is not None
    with pytest.raises(ValidationError, match="too many operations"):
        await cat.write(kvtxn.run, [TxnOp(kv=KvOp(verb="get", key="t/a"))] * 65)


async def test_events_wrap_around_a_ring_of_slots() -> None:
    cat = await _catalog()
    for n in range(EVENT_SLOTS + 3):
        await cat.write(kvwrites.event_fire, EventRequest(name="e", payload=str(n).encode()))
    events = cat.state.events.events()
    assert len(events) == EVENT_SLOTS
    assert events[0].payload == b"3" and events[-1].ltime == EVENT_SLOTS + 3
    with pytest.raises(ValidationError, match="reserved"):
        await cat.write(kvwrites.event_fire, EventRequest(name="_internal"))


async def test_kv_sessions_and_events_are_durable_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'c.db'}"
    cat = await _catalog(url)
    s = await _session(cat)
    await cat.write(kvwrites.kv_acquire, "dir/lock", b"v", s, 5)
    await cat.write(kvwrites.event_fire, EventRequest(name="deploy"))
    await cat.close()
    again = Catalog(open_storage(url))
    await again.open()
    entry = again.state.kv.get("dir/lock")
    assert entry is not None and (entry.value, entry.flags, entry.session) == (b"v", 5, s)
    assert entry.lock_index == 1 and again.state.kv.held_by(s) == ["dir/lock"]
    assert again.state.sessions.get(s) is not None
    assert [e.name for e in again.state.events.events()] == ["deploy"]
    await again.close()
