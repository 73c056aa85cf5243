"""Health never fails open: a result the store refuses is held critical and
retried until stored. Driven by a fake clock and a store that can be told to
refuse writes (as a full disk or an unreachable etcd would)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from waypost import StorageError
from waypost.catalog import Catalog, CheckDefinition, writes
from waypost.health import FakeClock, HealthRunner
from waypost.storage import Condition, Entry, Storage, open_storage

from ..helpers import check, node, service


class Refusing(Storage):
    """The memory backend, refusing every commit while `refuse` is set."""

    def __init__(self) -> None:
        self.inner = open_storage("memory://")
        self.refuse = False

    async def open(self, apply):  # type: ignore[no-untyped-def]
        await self.inner.open(apply)

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        if self.refuse:
            raise StorageError("the disk is full (test)")
        return await self.inner.commit(ops, conditions)

    async def close(self) -> None:
        await self.inner.close()


async def setup(defn: CheckDefinition, status: str = "passing"):  # type: ignore[no-untyped-def]
    store = Refusing()
    catalog = Catalog(store)
    await catalog.open()
    clock = FakeClock()
    runner = HealthRunner(catalog, "n1", clock=clock, rng=random.Random(1), reap_interval=1.0)
    await catalog.put(node(), service("web-1"), check("t", "web-1", status=status, definition=defn))
    await runner.start()
    return store, catalog, clock, runner


def shown(catalog: Catalog) -> str:
    return catalog.state.check("n1", "t").status  # type: ignore[union-attr]


def stored(catalog: Catalog) -> str:
    return catalog.state.stored_check("n1", "t").status  # type: ignore[union-attr]


async def test_an_expiry_the_store_refuses_is_shown_critical_and_stored_once_it_can_be() -> None:
    store, catalog, clock, runner = await setup(CheckDefinition(ttl=10))
    await runner.heartbeat("t", "passing", "ok")
    store.refuse = True
    await clock.advance(10.1)
    assert (shown(catalog), stored(catalog)) == ("critical", "passing")
    assert catalog.state.health("web", passing=True) == []  # its own answers stop at once
    assert "not stored yet" in catalog.state.check("n1", "t").output  # type: ignore[union-attr]
    await clock.advance(3)  # retries keep failing: still held
    assert shown(catalog) == "critical" and catalog.state.held
    store.refuse = False
    await clock.advance(0.6)  # within one retry interval of the store's return
    assert (shown(catalog), stored(catalog)) == ("critical", "critical")
    assert not catalog.state.held
    assert catalog.state.check("n1", "t").output == "TTL expired"  # type: ignore[union-attr]
    await runner.stop()


async def test_a_heartbeat_during_the_retries_supersedes_the_expiry() -> None:
    store, catalog, clock, runner = await setup(CheckDefinition(ttl=10))
    await runner.heartbeat("t", "passing", "ok")
    store.refuse = True
    await clock.advance(10.1)
    assert shown(catalog) == "critical"
    store.refuse = False
    await runner.heartbeat("t", "passing", "back")  # stored status passing: nothing to write
    await clock.advance(1)
    assert (shown(catalog), stored(catalog)) == ("passing", "passing")
    assert not catalog.state.held
    await runner.stop()


async def test_a_refused_heartbeat_is_held_and_raises() -> None:
    store, catalog, _clock, runner = await setup(CheckDefinition(ttl=10))
    store.refuse = True
    with pytest.raises(StorageError):
        await runner.heartbeat("t", "warning", "slow")
    assert (shown(catalog), stored(catalog)) == ("critical", "passing")
    store.refuse = False
    await runner.heartbeat("t", "passing", "ok")
    assert (shown(catalog), stored(catalog)) == ("passing", "passing")
    await runner.stop()


async def test_a_check_removed_while_held_leaves_no_hold_behind() -> None:
    store, catalog, clock, runner = await setup(CheckDefinition(ttl=10))
    await runner.heartbeat("t", "passing", "ok")
    store.refuse = True
    await clock.advance(10.1)
    assert catalog.state.held
    store.refuse = False
    await catalog.write(writes.deregister, "n1", "web-1")
    await clock.advance(1)
    assert not catalog.state.held
    assert runner.statistics()["results_waiting_for_store"] == 0
    await runner.stop()


async def test_the_reaper_judges_on_what_is_stored_not_on_a_hold() -> None:
    defn = CheckDefinition(interval=1, tcp="127.0.0.1:1", deregister_critical_after=5)
    store, catalog, clock, runner = await setup(defn, status="passing")

    async def warning(_: CheckDefinition) -> tuple[str, str]:
        return "warning", "slow"

    runner.probes = {"tcp": warning}
    store.refuse = True
    await clock.advance(30)  # held critical for far longer than 5 s
    assert shown(catalog) == "critical"
    assert ("n1", "web-1") in catalog.state.services  # never reaped on a hold
    store.refuse = False
    await clock.advance(2)
    assert stored(catalog) == "warning" and ("n1", "web-1") in catalog.state.services
    await runner.stop()


async def test_a_stopped_runner_starts_nothing_for_later_commits() -> None:
    _store, catalog, _clock, runner = await setup(CheckDefinition(ttl=10))
    await runner.stop()
    await catalog.put(check("t2", "web-1", definition=CheckDefinition(ttl=5)))
    assert runner.statistics()["running_checks"] == 0


async def test_an_instance_recovering_while_the_store_is_down_is_not_reaped_on_its_old_status() -> (
    None
):
    defn = CheckDefinition(interval=1, tcp="127.0.0.1:1", deregister_critical_after=5)
    store, catalog, clock, runner = await setup(defn, status="critical")

    async def passing(_: CheckDefinition) -> tuple[str, str]:
        return "passing", "fine again"

    runner.probes = {"tcp": passing}
    store.refuse = True
    await clock.advance(30)  # stored critical for 30 s, but its real result is passing
    store.refuse = False
    assert await runner.reap() == []  # the reaper may run before the result is stored
    await clock.advance(2)
    assert ("n1", "web-1") in catalog.state.services
    assert stored(catalog) == "passing"
    await runner.stop()


async def test_a_deleted_check_drops_its_hold_in_the_state() -> None:
    catalog = Catalog(open_storage("memory://"))
    await catalog.open()
    await catalog.put(node(), service("web-1"), check("t", "web-1", status="passing"))
    catalog.hold("n1", "t", "not stored")
    await catalog.write(writes.deregister, "n1", "web-1")
    assert catalog.state.held == {}
    await catalog.put(check("t", "", status="passing"))  # the same ID again, node-level
    assert shown(catalog) == "passing"


async def test_a_refused_heartbeat_is_retried_by_the_agent_until_stored() -> None:
    """As Consul's agent syncs its local state: the client got an error, but
    the result is not lost; it is stored once the store is back."""
    store, catalog, clock, runner = await setup(CheckDefinition(ttl=10), status="critical")
    store.refuse = True
    with pytest.raises(StorageError):
        await runner.heartbeat("t", "passing", "ok")
    await clock.advance(2)  # still refused: still held critical
    assert (shown(catalog), stored(catalog)) == ("critical", "critical")
    store.refuse = False
    await clock.advance(0.6)  # within one retry interval, and no new heartbeat
    assert (shown(catalog), stored(catalog)) == ("passing", "passing")
    assert not catalog.state.held
    await clock.advance(10)  # the TTL it renewed still runs out
    assert stored(catalog) == "critical"
    await runner.stop()


async def test_a_refused_heartbeat_is_not_stored_after_its_ttl_ran_out() -> None:
    store, catalog, clock, runner = await setup(CheckDefinition(ttl=2), status="critical")
    store.refuse = True
    with pytest.raises(StorageError):
        await runner.heartbeat("t", "passing", "ok")
    await clock.advance(2.5)  # the TTL runs out while the store refuses
    store.refuse = False
    await clock.advance(1)
    assert (shown(catalog), stored(catalog)) == ("critical", "critical")
    assert catalog.state.check("n1", "t").output == "TTL expired"  # type: ignore[union-attr]
    await runner.stop()


class SlowRefusing(Refusing):
    """Refuses after a turn of the loop, as a real store's failure comes back
    later: two heartbeats can be in flight at once."""

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        await asyncio.sleep(0)
        return await super().commit(ops, conditions)


async def test_concurrent_refused_heartbeats_leave_one_retry_which_stops_with_the_runner() -> None:
    store = SlowRefusing()
    catalog = Catalog(store)
    await catalog.open()
    clock = FakeClock()
    runner = HealthRunner(catalog, "n1", clock=clock, rng=random.Random(1), reap_interval=60.0)
    await catalog.put(
        node(), service("web-1"), check("t", "web-1", definition=CheckDefinition(ttl=100))
    )
    await runner.start()
    store.refuse = True
    results = await asyncio.gather(
        runner.heartbeat("t", "critical", "a"),
        runner.heartbeat("t", "warning", "b"),
        return_exceptions=True,
    )
    assert all(isinstance(r, StorageError) for r in results)
    await runner.stop()
    index = catalog.state.index
    store.refuse = False
    await clock.advance(5)  # no retry may outlive the runner
    assert catalog.state.index == index
    assert stored(catalog) == "passing"
