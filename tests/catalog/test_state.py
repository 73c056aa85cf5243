"""The state store: indexes per topic, watch isolation, cascades, liveness."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path

import pytest

from waypost.catalog import Catalog, Check, Node, Service, codec
from waypost.catalog.watch import CHECKS, NODES, SERVICES, Topic, service_topic
from waypost.storage import Entry

from ..helpers import check, node, open_catalog, service


async def test_per_service_index_moves_only_for_its_service() -> None:
    catalog = await open_catalog()
    await catalog.put(node(), service("a1", "a"), service("b1", "b"))
    a_index = catalog.state.index_of([service_topic("a")])
    await catalog.put(service("b2", "b"))
    assert catalog.state.index_of([service_topic("a")]) == a_index
    await catalog.put(service("a2", "a"))
    assert catalog.state.index_of([service_topic("a")]) > a_index


async def test_blocked_watcher_of_a_sleeps_through_b_and_wakes_for_a() -> None:
    catalog = await open_catalog()
    await catalog.put(node(), service("a1", "a"))
    index = catalog.state.index_of([service_topic("a")])
    waiter = asyncio.create_task(catalog.block([service_topic("a")], index, 5))
    await catalog.put(service("b1", "b"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await catalog.put(service("a2", "a"))
    await asyncio.wait_for(waiter, 1)


async def test_node_check_change_touches_every_service_on_the_node() -> None:
    catalog = await open_catalog()
    await catalog.put(
        node(), service("a1", "a"), service("b1", "b"), check("serf", status="passing")
    )
    before = catalog.state.index_of([service_topic("b")])
    await catalog.put(check("serf", status="critical"))
    assert catalog.state.index_of([service_topic("b")]) > before
    assert catalog.state.health("b", passing=True) == []


async def test_deregister_service_removes_its_checks_in_one_commit() -> None:
    catalog = await open_catalog()
    await catalog.put(node(), service("a1", "a"), check("c1", "a1", "a"), check("c2", "a1", "a"))
    index = await catalog.deregister_service("n1", "a1")
    assert catalog.state.checks == {}
    assert catalog.state.index_of([service_topic("a")]) == index


async def test_reregistration_keeps_check_status_unless_given() -> None:
    catalog = await open_catalog()
    await catalog.put(node())
    await catalog.register_service(service("a1", "a"), [check("c1", "a1", "a", status="passing")])
    await catalog.register_service(service("a1", "a"), [check("c1", "a1", "a", status="critical")])
    assert catalog.state.checks[("n1", "c1")].status == "passing"


async def test_liveness_key_drives_serf_health() -> None:
    catalog = await open_catalog()
    serf = check("serfHealth", status="passing")
    await catalog.put(node(), service("a1", "a"), serf)
    assert catalog.state.checks[("n1", "serfHealth")].status == "critical"  # no liveness yet
    await catalog.commit([Entry(codec.live_key("n1"), b"", ephemeral=True)])
    assert catalog.state.checks[("n1", "serfHealth")].status == "passing"
    await catalog.commit([codec.delete(codec.live_key("n1"))])
    assert catalog.state.health("a", passing=True) == []


async def test_snapshot_drops_keys_it_does_not_hold() -> None:
    catalog = await open_catalog()
    await catalog.put(node(), service("a1", "a"), service("a2", "a"))
    keep = [codec.put(node()), codec.put(service("a1", "a"))]
    catalog._apply(99, keep, snapshot=True)
    assert set(catalog.state.services) == {("n1", "a1")}
    assert catalog.state.index == 99


async def test_output_only_change_is_memory_only() -> None:
    catalog = await open_catalog()
    await catalog.put(node(), service("a1", "a"), check("c1", "a1", "a"))
    index = catalog.state.index
    assert await catalog.update_check("n1", "c1", "passing", "new output")
    assert catalog.state.index == index
    assert catalog.state.checks[("n1", "c1")].output == "new output"
    await catalog.update_check("n1", "c1", "critical", "down")
    assert catalog.state.index > index


@pytest.mark.parametrize(
    ("changed", "write"),
    [
        (CHECKS, lambda: check("c1", "a1", "a", status="passing")),
        (NODES, lambda: node("n2")),
        (SERVICES, lambda: service("b1", "b")),
    ],
    ids=["checks", "nodes", "services"],
)
async def test_a_read_over_several_topics_wakes_when_any_one_changes(
    changed: Topic, write: Callable[[], Node | Service | Check]
) -> None:
    catalog = await open_catalog()
    await catalog.put(node(), service("a1", "a"), check("c1", "a1", "a", status="critical"))
    topics = (SERVICES, CHECKS, NODES)
    index = catalog.state.index_of(topics)
    waiter = asyncio.create_task(catalog.block(topics, index, 5))
    await asyncio.sleep(0.01)
    assert not waiter.done(), "block() returned before anything changed"
    before = {t: catalog.state.index_of([t]) for t in topics}
    await catalog.put(write())
    moved = {t for t in topics if catalog.state.index_of([t]) > before[t]}
    assert moved == {changed}  # the write touched one of the read's topics only
    await asyncio.wait_for(waiter, 1)
    assert catalog.state.index_of(topics) > index


async def _replayed(url: str, chunk: int, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    from waypost.storage import sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "REPLAY_CHUNK", chunk)
    return await open_catalog(url)


async def test_a_replay_in_chunks_builds_the_same_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replayed three rows at a time, the catalog holds what one chunk gives:
    every record with its indexes, and every topic at the store's index, not
    moved past it once per chunk (a blocking query at that index must wait)."""
    url = f"sqlite:///{tmp_path}/c.db"
    catalog = await open_catalog(url)
    await catalog.put(node("n1"), node("n2"))
    for i in range(7):
        await catalog.put(service(f"web-{i}", node_name=f"n{i % 2 + 1}"))
        await catalog.put(check(f"c{i}", sid=f"web-{i}", node_name=f"n{i % 2 + 1}"))
    await catalog.put(service("db-1", name="db"))
    stored_index = catalog.state.index
    await catalog.close()
    whole = await _replayed(url, 10_000, monkeypatch)
    await whole.close()
    chunked = await _replayed(url, 3, monkeypatch)
    for table in ("nodes", "services", "checks", "by_name", "service_checks", "topic_index"):
        assert getattr(chunked.state, table) == getattr(whole.state, table), table
    assert len(chunked.state.services) == 8 and len(chunked.state.checks) == 7
    assert chunked.state.highest_index() == stored_index
    assert chunked.state.index_of([SERVICES, service_topic("web")]) == stored_index
    waiter = asyncio.ensure_future(chunked.block([service_topic("web")], stored_index, 5.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # nothing changed since the index it was given
    await chunked.put(service("web-9"))
    await asyncio.wait_for(waiter, 2)
    await chunked.close()


def _young_pairs() -> int:
    """Tuples of two strings (the indexes' keys) in the collector's young generation."""
    return sum(
        1
        for o in gc.get_objects(0)
        if type(o) is tuple and len(o) == 2 and all(type(x) is str for x in o)
    )


async def test_a_reregistration_of_a_frozen_catalog_leaves_nothing_young() -> None:
    """Re-registering a replayed (frozen) instance overwrites it in place: the
    indexes keep their old key tuples. Removing and inserting it swapped each
    frozen key for a new young one, which the young generation's count does
    not see (a frozen object freed lowers it as much), so the young
    generation grew by ~3 objects a write and its next collection stalled
    the loop (157 ms at 1M instances and 1,000 writes/s)."""
    catalog = await open_catalog()
    ids = [f"i{k}" for k in range(200)]
    await catalog.put(node(), *(service(i) for i in ids), *(check(f"c-{i}", i) for i in ids))
    gc.collect()
    gc.freeze()  # as the agent does after its replay
    gc.disable()
    try:
        before = _young_pairs()
        again = [service(i, tags=("v2",)) for i in ids]
        await catalog.put(*again, *(check(f"c-{i}", i, status="warning") for i in ids))
        grown = _young_pairs() - before
    finally:
        gc.enable()
        gc.unfreeze()
    assert catalog.state.services[("n1", "i7")].tags == ("v2",)
    assert catalog.state.checks[("n1", "c-i7")].status == "warning"
    assert grown < 20  # 600 (3 per instance) when each is removed and inserted


async def test_a_check_keeps_its_place_whatever_changes_it() -> None:
    """A re-registration, a hold and its release all show the same check where
    it stood among its instance's checks: clients that compare answers
    (consul-template's deep equality) must not see an order change as a change."""
    catalog = await open_catalog()
    await catalog.put(node(), service("i1"), check("c1", "i1"), check("c2", "i1"))
    state = catalog.state

    def order() -> list[str]:
        return [c.check_id for c in state.checks_of(state.services[("n1", "i1")])]

    first = order()
    await catalog.put(check("c1", "i1", status="warning"))
    assert order() == first
    state.hold("n1", "c1", "the store refused the result")
    assert order() == first and state.checks[("n1", "c1")].status == "critical"
    state.release("n1", "c1")
    assert order() == first and state.checks[("n1", "c1")].status == "warning"
