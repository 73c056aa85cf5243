"""The etcd backend against a real three-member etcd cluster on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import httpx
import pytest

from waypost._exceptions import StorageError, StoreUnavailable
from waypost.storage import Entry
from waypost.storage.etcd import EtcdStorage

from ..etcd_cluster import EtcdCluster
from .conftest import Mirror

pytestmark = pytest.mark.etcd

T = TypeVar("T")


async def eventually(probe: Callable[[], T], timeout: float = 15.0) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(0.02)
    return result


class Stores:
    """Opens EtcdStorage instances for a test and closes them after it."""

    def __init__(self, cluster: EtcdCluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.opened: list[EtcdStorage] = []

    async def open(
        self, apply: Mirror, *, members: list[int] | None = None, **options: str
    ) -> EtcdStorage:
        options.setdefault("timeout", "3s")
        url = self.cluster.url(self.prefix, **options)
        if members is not None:
            hosts = ",".join(self.cluster.members[i].endpoint for i in members)
            url = url.replace(self.cluster.endpoints, hosts)
        store = EtcdStorage(url)
        await store.open(apply)
        self.opened.append(store)
        return store


@pytest.fixture
async def stores(cluster: EtcdCluster, prefix: str) -> AsyncIterator[Stores]:
    helper = Stores(cluster, prefix)
    yield helper
    await asyncio.gather(*(s.close() for s in helper.opened), return_exceptions=True)


def put(key: str, value: bytes = b"v", ephemeral: bool = False) -> Entry:
    return Entry(key, value, ephemeral=ephemeral)


async def test_commit_is_applied_before_it_returns_in_revision_order(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    assert mirror.calls[0][2] is True  # open() starts with a snapshot
    seen = []
    for i in range(20):
        index = await store.commit([put(f"s/n1/svc{i}"), put(f"c/n1/chk{i}")])
        assert mirror.index == index, "commit returned before its revision was applied"
        assert mirror.keys[f"s/n1/svc{i}"].modify_index == index
        seen.append(index)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    applied = [c[0] for c in mirror.calls[1:]]
    assert applied == sorted(applied)


async def test_concurrent_commits_are_grouped_but_each_is_applied_with_its_index(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    indexes = await asyncio.gather(*(store.commit([put(f"s/n1/x{i}")]) for i in range(200)))
    assert all(mirror.keys[f"s/n1/x{i}"].modify_index == idx for i, idx in enumerate(indexes))
    assert store.statistics()["txns"] < 200  # group commit merged some


async def test_commits_touching_the_same_key_are_not_merged(stores: Stores, mirror: Mirror) -> None:
    store = await stores.open(mirror)
    indexes = await asyncio.gather(*(store.commit([put("n/a", b"%d" % i)]) for i in range(20)))
    assert len(set(indexes)) == 20  # one Txn each: etcd refuses a key twice in one Txn
    assert mirror.keys["n/a"].modify_index == max(indexes)


async def test_a_bad_commit_does_not_fail_the_ones_merged_with_it(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    huge = b"x" * (2 * 1024 * 1024)  # over etcd's default --max-request-bytes (1.5 MiB)
    results = await asyncio.gather(
        *(store.commit([put(f"s/n1/ok{i}")]) for i in range(30)),
        store.commit([put("s/n1/huge", huge)]),
        *(store.commit([put(f"s/n1/ok{i}")]) for i in range(30, 60)),
        return_exceptions=True,
    )
    assert isinstance(results[30], StorageError) and not isinstance(results[30], StoreUnavailable)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 30)
    assert {f"s/n1/ok{i}" for i in range(60)} <= set(mirror.keys)


async def test_batch_is_one_revision_with_create_and_modify_index(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    first = await store.commit([put("n/a", b"1"), put("s/a/web")])
    second = await store.commit([put("n/a", b"2"), Entry("s/a/web", None), put("n/a", b"3")])
    node = mirror.keys["n/a"]
    assert (node.value, node.create_index, node.modify_index) == (b"3", first, second)
    assert "s/a/web" not in mirror.keys
    assert next(c for c in mirror.calls if c[0] == second)[1][0].key == "n/a"


async def test_a_no_op_commit_still_returns_an_applied_index(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    index = await store.commit([Entry("s/nowhere/none", None)])
    assert index >= 1 and mirror.index >= index - 1


async def test_changes_made_by_another_agent_arrive_with_the_same_index(
    stores: Stores, mirror: Mirror
) -> None:
    other = Mirror()
    a = await stores.open(mirror)
    await stores.open(other)
    index = await a.commit([put("s/a/payment", b"p1")])
    entry = await eventually(lambda: other.keys.get("s/a/payment"))
    assert entry.modify_index == index == mirror.keys["s/a/payment"].modify_index
    await a.commit([Entry("s/a/payment", None)])
    await eventually(lambda: "s/a/payment" not in other.keys)


async def test_open_replays_what_is_stored_as_one_snapshot(stores: Stores, mirror: Mirror) -> None:
    a = await stores.open(mirror)
    created = await a.commit([put("n/a"), put("s/a/one")])
    modified = await a.commit([put("s/a/one", b"new")])
    late = Mirror()
    await stores.open(late)
    index, entries, snapshot = late.calls[0]
    assert snapshot and index >= modified
    by_key = {e.key: e for e in entries}
    assert set(by_key) == {"n/a", "s/a/one"}  # the internal _rev key stays internal
    assert (by_key["s/a/one"].create_index, by_key["s/a/one"].modify_index) == (created, modified)


async def test_compacted_history_means_a_clean_relist_not_a_lost_update(
    stores: Stores, mirror: Mirror, cluster: EtcdCluster
) -> None:
    """An agent cut off from etcd while others write and etcd compacts re-lists on return."""
    # Cut off by killing the one member it knows: a follower, so the others'
    # writes need no election. With the leader killed, the first write waited
    # out a 2 s attempt on it and had 1 s of its 3 s left for the election and
    # a second attempt (riding out elections is another test's subject:
    # test_killing_the_leader_during_writes_loses_no_acknowledged_write).
    # The writer's longer timeout covers a leader that moves meanwhile.
    leader = cluster.leader()
    assert leader is not None
    lone = (leader + 1) % 3
    cut_off = await stores.open(mirror, members=[lone])
    await cut_off.commit([put("s/a/stays"), put("s/a/goes")])
    writer = await stores.open(Mirror(), members=[i for i in range(3) if i != lone], timeout="10s")
    cluster.kill(lone)
    await writer.commit([Entry("s/a/goes", None), put("s/b/new")])
    await writer.commit([put("s/a/stays", b"changed")])
    cluster.compact()
    cluster.restart(lone)
    await eventually(lambda: mirror.snapshots() >= 2, timeout=30)
    await eventually(lambda: "s/b/new" in mirror.keys)
    assert set(mirror.keys) == {"s/a/stays", "s/b/new"}
    assert mirror.keys["s/a/stays"].value == b"changed"
    assert cut_off.statistics()["relists"] >= 2


async def test_ephemeral_key_vanishes_when_its_agent_dies(stores: Stores, mirror: Mirror) -> None:
    dying = await stores.open(Mirror(), lease_ttl="2s")
    await stores.open(mirror)
    await dying.commit([put("l/node-a", b"", ephemeral=True), put("n/node-a")])
    await eventually(lambda: "l/node-a" in mirror.keys)
    assert mirror.keys["l/node-a"].ephemeral and not mirror.keys["n/node-a"].ephemeral
    started = time.monotonic()
    await dying.close(revoke_lease=False)  # as kill -9 would: the lease just runs out
    await eventually(lambda: "l/node-a" not in mirror.keys, timeout=15)
    assert time.monotonic() - started < 10
    assert "n/node-a" in mirror.keys


async def test_a_graceful_close_revokes_the_lease_at_once(stores: Stores, mirror: Mirror) -> None:
    leaving = await stores.open(Mirror(), lease_ttl="30s")
    await stores.open(mirror)
    await leaving.commit([put("l/node-a", b"", ephemeral=True)])
    await eventually(lambda: "l/node-a" in mirror.keys)
    await leaving.close()
    await eventually(lambda: "l/node-a" not in mirror.keys, timeout=5)


async def test_a_lost_lease_is_granted_again_and_liveness_put_back(
    stores: Stores, mirror: Mirror, cluster: EtcdCluster
) -> None:
    agent = await stores.open(Mirror(), lease_ttl="3s")
    await stores.open(mirror)
    await agent.commit([put("l/node-a", b"", ephemeral=True)])
    lease = await eventually(lambda: mirror.keys.get("l/node-a"))
    _revoke_all_leases(cluster)  # what a long partition does to an agent's lease
    await eventually(lambda: "l/node-a" not in mirror.keys)
    back = await eventually(lambda: mirror.keys.get("l/node-a"), timeout=15)
    assert back.modify_index > lease.modify_index
    assert agent.statistics()["lease_grants"] >= 2


async def test_etcd_down_fails_writes_fast_and_serves_stale_reads_then_recovers(
    stores: Stores, mirror: Mirror, cluster: EtcdCluster
) -> None:
    other = Mirror()
    store = await stores.open(mirror)
    await stores.open(other)
    await store.commit([put("s/a/before")])
    cluster.kill_all()

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await store.commit([put("s/a/during")])
    assert time.monotonic() - started < 3.5, "a write to a dead etcd must fail fast"
    with pytest.raises(StoreUnavailable):
        await store.confirm()
    await eventually(lambda: not store.health().known_leader, timeout=5)
    first = store.health().last_contact_ms
    await eventually(lambda: store.health().last_contact_ms > first + 300)
    assert "s/a/before" in mirror.keys and "s/a/during" not in mirror.keys  # stale reads go on

    cluster.heal()
    await eventually(lambda: store.health().known_leader, timeout=20)
    index = await store.commit([put("s/a/after")])
    await store.confirm()
    assert (await eventually(lambda: other.keys.get("s/a/after"))).modify_index == index
    assert store.health().last_contact_ms == 0


async def test_killing_the_leader_during_writes_loses_no_acknowledged_write(
    stores: Stores, mirror: Mirror, cluster: EtcdCluster
) -> None:
    store = await stores.open(mirror, timeout="8s")
    acknowledged: list[str] = []
    failures: list[Exception] = []

    async def writer(worker: int) -> None:
        for i in range(60):
            key = f"s/w{worker}/{i}"
            try:
                await store.commit([put(key)])
                acknowledged.append(key)
            except StorageError as exc:
                failures.append(exc)

    async def assassin() -> None:
        await eventually(lambda: len(acknowledged) >= 40)
        leader = cluster.leader()
        assert leader is not None
        cluster.kill(leader)

    await asyncio.gather(*(writer(w) for w in range(4)), assassin())
    assert len(acknowledged) >= 200, f"writes did not resume after election: {failures[:3]}"
    fresh = Mirror()
    await stores.open(fresh)
    missing = [k for k in acknowledged if k not in fresh.keys]
    assert not missing, f"acknowledged writes lost: {missing[:5]}"


async def test_a_batch_etcd_refuses_is_a_storage_error_with_a_hint(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    too_many = [put(f"s/a/{i}") for i in range(200)]  # etcd's default --max-txn-ops is 128
    with pytest.raises(StorageError, match="max-txn-ops") as info:
        await store.commit(too_many)
    assert not isinstance(info.value, StoreUnavailable)
    assert not any(k.startswith("s/a/") for k in mirror.keys)  # nothing of it applied
    assert store.health().known_leader


async def test_open_fails_clearly_when_no_member_answers(prefix: str) -> None:
    store = EtcdStorage(f"etcd://127.0.0.1:1?prefix={prefix}&timeout=2s")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1"):
        await store.open(Mirror())
    assert time.monotonic() - started < 3
    await store.close()


def _revoke_all_leases(cluster: EtcdCluster) -> None:
    with httpx.Client(base_url=cluster.members[0].client_url, timeout=5) as client:
        leases = client.post("/v3/lease/leases", json={}).json().get("leases", [])
        for lease in leases:
            client.post("/v3/lease/revoke", json={"ID": lease["ID"]})
