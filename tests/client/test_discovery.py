"""Discovery against a real (fake-Consul) HTTP server: cache, watch, stale-on-error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from waypost import AsyncDiscovery, Discovery, RegistryUnavailable
from waypost.client import FakeClock, Instance
from waypost.client._cache import InstanceCache
from waypost.client._discovery import next_index

from ._servers import FakeConsul


async def test_instances_parses_consul_answer(consul: FakeConsul) -> None:
    consul.set("payment", [("p1", "127.0.0.2", 3000)], tags=["v1", "zone=a"], weight=5)
    async with AsyncDiscovery(consul.url) as discovery:
        [inst] = await discovery.instances("payment")
    assert (inst.id, inst.address, inst.port, inst.weight) == ("p1", "127.0.0.2", 3000, 5)
    assert inst.tags == ("v1", "zone=a") and inst.zone == "a"
    assert "passing=1" in consul.requests[0]


async def test_unknown_service_is_empty(consul: FakeConsul) -> None:
    async with AsyncDiscovery(consul.url) as discovery:
        assert await discovery.instances("nothing") == []


async def test_watch_yields_changes_and_shares_one_long_poll(consul: FakeConsul) -> None:
    consul.set("payment", [("p1", "127.0.0.1", 1)])
    async with AsyncDiscovery(consul.url) as discovery:
        watches = [discovery.watch("payment").__aiter__() for _ in range(3)]
        firsts = [await w.__anext__() for w in watches]
        assert all([i.id for i in f] == ["p1"] for f in firsts)
        consul.set("payment", [("p1", "127.0.0.1", 1), ("p2", "127.0.0.1", 2)])
        seconds = await asyncio.wait_for(asyncio.gather(*(w.__anext__() for w in watches)), 5)
        assert all(sorted(i.id for i in s) == ["p1", "p2"] for s in seconds)
        polls = [r for r in consul.requests if "payment" in r]
        assert len(polls) <= 3  # one watcher: initial read + long-polls, not 3 per change
        for w in watches:
            await w.aclose()  # type: ignore[attr-defined]


async def test_registry_down_without_cache_raises() -> None:
    async with AsyncDiscovery("http://127.0.0.1:9", first_answer_timeout=3) as discovery:
        with pytest.raises(RegistryUnavailable, match=r"127\.0\.0\.1:9"):
            await discovery.instances("payment")


async def test_stale_on_error_serves_last_known(consul: FakeConsul) -> None:
    consul.set("payment", [("p1", "127.0.0.1", 1)])
    async with AsyncDiscovery(consul.url, max_backoff=0.1) as discovery:
        assert len(await discovery.instances("payment")) == 1
        consul.fail = True
        consul.set("payment", [])  # wakes the long-poll, which now gets a 500
        for _ in range(100):
            entry = await discovery.entry("payment")
            if entry.stale:
                break
            await asyncio.sleep(0.02)
        assert entry.stale and [i.id for i in entry.instances] == ["p1"]
        assert discovery.cache.stale_served >= 1
        consul.fail = False
        for _ in range(200):
            entry = await discovery.entry("payment")
            if not entry.stale:
                break
            await asyncio.sleep(0.02)
        assert not entry.stale and entry.instances == ()


async def test_snapshot_lets_a_process_start_while_registry_is_down(
    consul: FakeConsul, tmp_path: Path
) -> None:
    snap = tmp_path / "snap.json"
    consul.set("payment", [("p1", "127.0.0.1", 1)])
    async with AsyncDiscovery(consul.url, snapshot=snap) as discovery:
        await discovery.instances("payment")
    assert snap.exists()
    async with AsyncDiscovery(
        "http://127.0.0.1:9", snapshot=snap, first_answer_timeout=3
    ) as discovery:
        entry = await discovery.entry("payment")
    assert entry.stale and [i.id for i in entry.instances] == ["p1"]


def test_sync_discovery_ttl_cache(consul: FakeConsul) -> None:
    clock = FakeClock()
    consul.set("payment", [("p1", "127.0.0.1", 1)])
    with Discovery(consul.url, ttl=5, clock=clock) as discovery:
        assert [i.id for i in discovery.instances("payment")] == ["p1"]
        consul.set("payment", [("p2", "127.0.0.1", 2)])
        assert [i.id for i in discovery.instances("payment")] == ["p1"]  # fresh: cached
        clock.advance(5)
        assert [i.id for i in discovery.instances("payment")] == ["p2"]
        consul.fail = True
        clock.advance(5)
        assert [i.id for i in discovery.instances("payment")] == ["p2"]  # stale, served
        assert discovery.cache.get("payment").stale  # type: ignore[union-attr]


def test_sync_watch(consul: FakeConsul) -> None:
    consul.set("payment", [("p1", "127.0.0.1", 1)])
    with Discovery(consul.url, wait=2) as discovery:
        watch = discovery.watch("payment")
        assert [i.id for i in next(watch)] == ["p1"]
        consul.set("payment", [("p2", "127.0.0.1", 2)])
        assert [i.id for i in next(watch)] == ["p2"]


def test_index_rules() -> None:
    assert next_index(0, 5) == 5
    assert next_index(5, 5) == 5
    assert next_index(5, 3) == 0  # went backwards: reset
    assert next_index(0, 0) == 1  # never below 1


async def test_index_reset_is_followed(consul: FakeConsul) -> None:
    consul.set("payment", [("p1", "127.0.0.1", 1)])
    async with AsyncDiscovery(consul.url) as discovery:
        watch = discovery.watch("payment").__aiter__()
        await watch.__anext__()
        consul.reset_index(2)  # registry restored from an older state
        consul.set("payment", [("p9", "127.0.0.1", 9)])
        nxt = await asyncio.wait_for(watch.__anext__(), 5)
        assert [i.id for i in nxt] == ["p9"]
        await watch.aclose()  # type: ignore[attr-defined]


def test_cache_versions_move_only_on_change() -> None:
    cache = InstanceCache(ttl=1, clock=FakeClock())
    a = Instance("a", "127.0.0.1", 1)
    assert cache.store("s", (a,), 1).version == 1
    assert cache.store("s", (a,), 2).version == 1
    assert cache.store("s", (), 3).version == 2
    entry = cache.fail("s", RuntimeError("x"))
    assert entry is not None and entry.stale and entry.version == 2


async def test_static_source() -> None:
    async with AsyncDiscovery("static://10.0.0.5:3000,10.0.0.6:3000") as discovery:
        found = await discovery.instances("anything")
    assert [(i.address, i.port) for i in found] == [("10.0.0.5", 3000), ("10.0.0.6", 3000)]
    with Discovery("static://[::1]:80") as discovery:
        assert discovery.instances("x")[0].url == "http://[::1]:80"


def test_bad_scheme() -> None:
    with pytest.raises(ValueError, match="scheme"):
        Discovery("ftp://x")


async def test_discoveries_with_same_url_share_one_long_poll(consul: FakeConsul) -> None:
    consul.set("payment", [("p1", "127.0.0.1", 1)])
    first, second = AsyncDiscovery(consul.url), AsyncDiscovery(consul.url)
    assert [i.id for i in await first.instances("payment")] == ["p1"]
    assert [i.id for i in await second.instances("payment")] == ["p1"]
    assert first.cache is second.cache
    assert first.statistics()["shared_by"] == 2
    initial_reads = [r for r in consul.requests if "payment" in r and "index=" not in r]
    assert len(initial_reads) == 1
    await first.aclose()
    consul.set("payment", [("p2", "127.0.0.1", 2)])
    watch = second.watch("payment").__aiter__()
    await watch.__anext__()
    assert [i.id for i in await asyncio.wait_for(watch.__anext__(), 5)] == ["p2"]
    await watch.aclose()  # type: ignore[attr-defined]
    await second.aclose()
    separate = AsyncDiscovery(consul.url, share=False)
    assert separate.statistics()["shared_by"] == 1
    await separate.aclose()


async def test_tag_filter(consul: FakeConsul) -> None:
    consul.set("payment", [("p1", "127.0.0.1", 1)], tags=["v1"])
    async with AsyncDiscovery(consul.url) as discovery:
        assert [i.id for i in await discovery.instances("payment", tag="v1")] == ["p1"]
        assert await discovery.instances("payment", tag="v2") == []
        assert len(await discovery.instances("payment")) == 1
    with Discovery(consul.url) as sync_discovery:
        assert sync_discovery.instances("payment", tag="v2") == []
        assert len(sync_discovery.instances("payment", tag="v1")) == 1
    async with AsyncDiscovery("static://127.0.0.1:1") as static:
        assert await static.instances("payment", tag="v1") == []  # static lists carry no tags
