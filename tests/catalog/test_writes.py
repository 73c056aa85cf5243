"""The one write path: plans validated against the state they land on.

Races are made deterministic with a store that yields before every commit,
so two plans are always made on the same state before either commits: the
situation a busy agent's group commit produces by chance.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sequence
from pathlib import Path

import msgspec
import pytest

from waypost import ConfigError, NotFoundError, ValidationError
from waypost._exceptions import Conflict
from waypost.catalog import Catalog, Node, codec, kv, kvtxn, kvwrites, writes
from waypost.catalog.definitions import (
    CatalogDeregistration,
    CatalogRegistration,
    CheckRegistration,
    ConnectDefinition,
    ServiceRegistration,
)
from waypost.catalog.kv import KvEntry, key_topic
from waypost.catalog.kvtxn import KvOp, TxnOp
from waypost.catalog.kvwrites import SessionRequest
from waypost.catalog.model import SERF_CHECK_ID
from waypost.catalog.txn import Txn
from waypost.catalog.watch import service_topic
from waypost.storage import Condition, Entry, Storage, open_storage

from ..helpers import check, node, service


class Yielding(Storage):
    """A real backend that lets other tasks run before each commit."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.shared = inner.shared

    async def open(self, apply):  # type: ignore[no-untyped-def]
        await self.inner.open(apply)

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        await asyncio.sleep(0)
        return await self.inner.commit(ops, conditions)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def catalog(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A catalog on each backend; on etcd, on the shared real cluster with a prefix of its own."""
    if request.param == "etcd":
        cluster = request.getfixturevalue("cluster")
        url = cluster.url(f"/writes-{uuid.uuid4().hex[:12]}/")
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/c.db"
    else:
        url = "memory://"
    cat = Catalog(Yielding(open_storage(url)))
    await cat.open()
    await cat.put(node())
    yield cat
    await cat.close()


def ttl_check(name: str, service_id: str = "") -> CheckRegistration:
    return CheckRegistration(name=name, checkid=name, ttl="30s", serviceid=service_id)


def orphans(cat: Catalog) -> list[tuple[str, str]]:
    return [
        k
        for k, c in cat.state.checks.items()
        if c.service_id and (k[0], c.service_id) not in cat.state.services
    ]


async def test_a_check_registered_while_its_service_goes_is_never_orphaned(
    catalog: Catalog,
) -> None:
    for i in range(150):
        sid = f"x{i}"
        await catalog.write(
            writes.register, "n1", ServiceRegistration(name="x", id=sid), False, False
        )
        await asyncio.gather(
            catalog.write(writes.register_check, "n1", ttl_check(f"c{i}", sid), False),
            catalog.write(writes.deregister, "n1", sid),
            return_exceptions=True,
        )
        assert orphans(catalog) == [], f"pair {i}"
    assert catalog.conflicts > 0  # the races did happen, and were resolved by re-planning


async def test_a_status_update_racing_a_deregistration_never_brings_the_check_back(
    catalog: Catalog,
) -> None:
    for i in range(150):
        sid = f"y{i}"
        reg = ServiceRegistration(name="y", id=sid, check=ttl_check(f"t{i}"))
        await catalog.write(writes.register, "n1", reg, False, False)
        results = await asyncio.gather(
            catalog.write(writes.deregister, "n1", sid),
            catalog.write(writes.set_status, "n1", f"t{i}", "passing", "ok"),
            return_exceptions=True,
        )
        assert results[0] is None  # the deregistration was acknowledged...
        assert ("n1", f"t{i}") not in catalog.state.checks, f"pair {i}"  # ...and stays done
        assert isinstance(results[1], bool | NotFoundError)


async def test_a_status_update_never_writes_back_a_stale_check(catalog: Catalog) -> None:
    """Two results for one check, planned on the same state: both land in order,
    neither is computed from a record the other replaced."""
    reg = ServiceRegistration(name="z", id="z1", check=ttl_check("t"))
    await catalog.write(writes.register, "n1", reg, False, False)
    await asyncio.gather(
        catalog.write(writes.set_status, "n1", "t", "passing", "first"),
        catalog.write(writes.set_status, "n1", "t", "warning", "second"),
    )
    stored = catalog.state.checks[("n1", "t")]
    assert (stored.status, stored.output) == ("warning", "second")


async def test_deregistering_a_node_takes_instances_registered_meanwhile(catalog: Catalog) -> None:
    ext = CatalogRegistration(node="ext", address="10.0.0.1")
    await catalog.write(writes.catalog_register, ext, "dc1")
    # SkipNodeUpdate: the registration does not rewrite the node, so only the
    # deregistration's guard on the node's key ranges can see the new instance.
    with_service = CatalogRegistration(
        node="ext", skipnodeupdate=True, service=ServiceRegistration(service="db", id="db1")
    )
    await asyncio.gather(
        catalog.write(writes.catalog_register, with_service, "dc1"),
        catalog.write(writes.catalog_deregister, CatalogDeregistration(node="ext")),
        return_exceptions=True,
    )
    leftover = [k for k in catalog.state.services if k[0] == "ext"]
    assert leftover == [] or "ext" in catalog.state.nodes  # never an instance without its node
    assert catalog.conflicts > 0


async def test_reads_see_the_plans_own_writes() -> None:
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    reg = CatalogRegistration(
        node="ext",
        address="10.0.0.2",
        service=ServiceRegistration(service="web", id="w1"),
        check=CheckRegistration(name="alive", serviceid="w1", status="passing"),
    )
    await cat.write(writes.catalog_register, reg, "dc1")
    assert cat.state.checks[("ext", "alive")].service_name == "web"


async def test_a_plan_that_stages_nothing_commits_nothing() -> None:
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    await cat.put(node(), service("s1"), check("c", "s1"))
    before = cat.storage.statistics()["commits"]
    assert await cat.write(writes.set_status, "n1", "c", "passing", "same") is False
    assert cat.storage.statistics()["commits"] == before


async def test_the_catalog_api_refuses_a_waypost_agents_node() -> None:
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    agent = Node(name="agent-1", address="127.0.0.1")
    serf = check(SERF_CHECK_ID, node_name="agent-1")
    await cat.write(writes.join, agent, serf)
    moved = CatalogRegistration(node="agent-1", address="6.6.6.6")
    with pytest.raises(ValidationError, match='Node "agent-1" belongs to the waypost agent'):
        await cat.write(writes.catalog_register, moved, "dc1")
    with pytest.raises(ValidationError, match="agent-1"):
        await cat.write(writes.catalog_deregister, CatalogDeregistration(node="agent-1"))
    assert cat.state.nodes["agent-1"].address == "127.0.0.1"
    # Once its agent is gone (no liveness), cleaning up after it is allowed.
    await cat.write(writes.forget_other_agents, "someone-else")
    await cat.write(writes.catalog_deregister, CatalogDeregistration(node="agent-1"))
    assert "agent-1" not in cat.state.nodes


async def test_adopt_moves_a_renamed_agents_instances_and_checks() -> None:
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    old = Node(name="old", id="7a0c1c2e-0000-4000-8000-000000000001", address="127.0.0.1")
    await cat.write(writes.join, old, check(SERF_CHECK_ID, node_name="old"))
    reg = ServiceRegistration(name="web", id="w1", check=ttl_check("t"))
    await cat.write(writes.register, "old", reg, False, False)
    new = Node(name="new", id=old.id, address="127.0.0.1")

    def start(txn: Txn) -> list[str]:
        renamed = writes.adopt(txn, new, others_alive=False)
        writes.join(txn, new, check(SERF_CHECK_ID, node_name="new"))
        return renamed

    assert await cat.write(start) == ["old"]
    assert set(cat.state.nodes) == {"new"}
    assert ("new", "w1") in cat.state.services
    assert cat.state.checks[("new", "t")].service_id == "w1"
    assert not any(n == "old" for n, _ in cat.state.checks)


async def test_adopt_refuses_a_live_agent_with_the_same_node_id_on_a_shared_store() -> None:
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    other = Node(name="other", id="7a0c1c2e-0000-4000-8000-000000000002", address="127.0.0.1")
    await cat.write(writes.join, other, check(SERF_CHECK_ID, node_name="other"))
    copy = Node(name="copy", id=other.id, address="127.0.0.1")
    with pytest.raises(ConfigError, match='node "other" is alive and has this agent'):
        await cat.write(writes.adopt, copy, True)
    assert ("other", SERF_CHECK_ID) in cat.state.checks  # nothing taken from it


async def test_a_held_check_shows_critical_but_writers_see_the_stored_one() -> None:
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    await cat.put(node(), service("s1"), check("c", "s1", status="passing"))
    index = cat.state.index_of([service_topic("web")])
    waiter = asyncio.ensure_future(cat.block([service_topic("web")], index, 5.0))
    await asyncio.sleep(0)
    cat.hold("n1", "c", "not stored")
    await asyncio.wait_for(waiter, 1.0)  # a hold wakes blocking queries at once
    assert cat.state.health("web", passing=True) == []
    assert cat.state.checks[("n1", "c")].status == "critical"
    assert cat.state.stored_check("n1", "c").status == "passing"  # type: ignore[union-attr]
    # A result equal to the stored status stages nothing: it is not "critical".
    assert await cat.write(writes.set_status, "n1", "c", "passing", "x") is False
    cat.release("n1", "c")
    assert len(cat.state.health("web", passing=True)) == 1


async def test_not_found_and_validation_errors_write_nothing() -> None:
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    await cat.put(node())
    with pytest.raises(NotFoundError):
        await cat.write(writes.deregister, "n1", "nope")
    with pytest.raises(NotFoundError, match='ServiceID "nope" does not exist'):
        await cat.write(writes.register_check, "n1", ttl_check("c", "nope"), False)
    assert cat.storage.statistics()["commits"] == 1


async def test_checks_joining_and_leaving_an_instance_leave_its_modify_index_alone() -> None:
    """As in Consul, an instance's ModifyIndex moves only when the instance changes
    (its check set is guarded by a key of its own)."""
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    await cat.put(node())
    await cat.write(writes.register, "n1", ServiceRegistration(name="web", id="w1"), False, False)
    before = cat.state.instance("n1", "w1").modify_index  # type: ignore[union-attr]
    await cat.write(writes.register_check, "n1", ttl_check("extra", "w1"), False)
    await cat.write(writes.deregister_check, "n1", "extra")
    assert cat.state.instance("n1", "w1").modify_index == before  # type: ignore[union-attr]
    assert cat.state.guards[("n1", "w1")] > before  # the set's guard moved instead


# -- a write that changes nothing (Consul: IsSame, DirEntry.Equal) ---------------


def web(**kw: object) -> ServiceRegistration:
    fields: dict[str, object] = {"name": "web", "id": "w1", "port": 80, "tags": ["a"]}
    fields["checks"] = [ttl_check("t1"), ttl_check("t2")]
    fields.update(kw)
    return ServiceRegistration(**fields)  # type: ignore[arg-type]


async def wakes(cat: Catalog, write: Awaitable[object]) -> bool:
    """Whether `write` wakes a blocking query on the `web` service parked before it."""
    topics = [service_topic("web")]
    waiter = asyncio.ensure_future(cat.block(topics, cat.state.index_of(topics), 5.0))
    await asyncio.sleep(0)  # parked
    await write
    await asyncio.sleep(0.02)  # a commit is applied before write() returns: time to wake
    woken = waiter.done()
    waiter.cancel()
    return woken


def indexes(cat: Catalog) -> tuple[int, ...]:
    """The service topic's index and the ModifyIndex of the instance and its checks."""
    instance = cat.state.instance("n1", "w1")
    assert instance is not None
    records = [instance, *cat.state.checks_of(instance)]
    return (cat.state.index_of([service_topic("web")]), *(r.modify_index for r in records))


async def test_an_identical_reregistration_moves_no_index_and_wakes_nobody(
    catalog: Catalog,
) -> None:
    await catalog.write(writes.register, "n1", web(), False, False)
    # The checks' status moved since: re-registered without one, they keep it (keep_status).
    await catalog.write(writes.set_status, "n1", "t1", "passing", "ok")
    before = indexes(catalog)
    assert not await wakes(catalog, catalog.write(writes.register, "n1", web(), False, False))
    assert indexes(catalog) == before
    assert catalog.state.check("n1", "t1").status == "passing"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "replace"),
    [
        ({"tags": ["b"]}, False),
        (
            {"checks": [ttl_check("t1"), CheckRegistration(name="t2", checkid="t2", ttl="1m")]},
            False,
        ),
        ({"checks": [ttl_check("t1")]}, True),  # t2 removed, with replace-existing-checks
    ],
    ids=["tag", "check-definition", "check-removed"],
)
async def test_a_reregistration_that_changes_something_writes_and_wakes(
    catalog: Catalog, change: dict[str, object], replace: bool
) -> None:
    await catalog.write(writes.register, "n1", web(), False, False)
    index = catalog.state.index_of([service_topic("web")])
    assert await wakes(catalog, catalog.write(writes.register, "n1", web(**change), replace, False))
    assert catalog.state.index_of([service_topic("web")]) > index


async def test_unchanged_registrations_commit_nothing() -> None:
    """The agent's endpoints and the catalog's: nothing reaches the store."""
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    await cat.put(node())
    ext = CatalogRegistration(
        node="ext",
        address="10.0.0.2",
        nodemeta={"rack": "r1"},
        service=ServiceRegistration(service="db", id="d1", port=5432),
        check=CheckRegistration(name="alive", serviceid="d1", status="passing"),
    )
    sidecar = ConnectDefinition(sidecarservice=ServiceRegistration())
    writes_ = [
        (writes.register, "n1", web(connect=sidecar), False, False),
        (writes.register_check, "n1", ttl_check("extra", "w1"), False),
        (writes.node_maintenance, check("_node_maintenance", status="critical"), True),
        (writes.catalog_register, ext, "dc1"),
    ]
    for plan, *args in writes_:
        await cat.write(plan, *args)  # type: ignore[operator]
        commits = cat.storage.statistics()["commits"]
        await cat.write(plan, *args)  # type: ignore[operator]
        assert cat.storage.statistics()["commits"] == commits, plan.__name__
    assert ("n1", "w1-sidecar-proxy") in cat.state.services
    # Without its sidecar, an instance registered again is a change: the sidecar goes.
    await cat.write(writes.register, "n1", web(), False, False)
    assert ("n1", "w1-sidecar-proxy") not in cat.state.services
    moved = msgspec.structs.replace(ext, nodemeta={"rack": "r2"})
    await cat.write(writes.catalog_register, moved, "dc1")
    assert cat.storage.statistics()["commits"] == commits + 2


async def test_a_kv_write_of_what_the_key_holds_writes_nothing() -> None:
    """Consul's kvsSetTxn skips a set equal to the entry (value, flags, session,
    lock index): ModifyIndex stays and no watcher wakes. Its answer stays true."""
    cat = Catalog(open_storage("memory://"))
    await cat.open()
    await cat.put(node())
    session = await cat.write(
        kvwrites.session_create, SessionRequest(node="n1", checks=[]), 10, 1e5
    )
    await cat.write(kvwrites.kv_set, "k", b"v", 3)
    entry = cat.state.kv.get("k")
    assert entry is not None
    commits = cat.storage.statistics()["commits"]
    assert await cat.write(kvwrites.kv_set, "k", b"v", 3) is True
    assert await cat.write(kvwrites.kv_cas, "k", b"v", entry.modify_index, 3) is True
    assert await cat.write(kvwrites.kv_cas, "k", b"v", entry.modify_index + 1, 3) is False
    assert cat.storage.statistics()["commits"] == commits
    assert cat.state.kv.get("k") == entry
    assert cat.state.index_of([key_topic("k")]) == entry.modify_index
    assert await cat.write(kvwrites.kv_set, "k", b"v", 4) is True  # other flags: a change
    assert await cat.write(kvwrites.kv_acquire, "k", b"v", session, 4) is True
    commits = cat.storage.statistics()["commits"]
    assert await cat.write(kvwrites.kv_acquire, "k", b"v", session, 4) is True  # held already
    assert cat.storage.statistics()["commits"] == commits
    assert await cat.write(kvwrites.kv_release, "k", b"v", session, 4) is True  # a change
    assert cat.storage.statistics()["commits"] == commits + 1


class Lagging(Storage):
    """A shared store where "another agent" writes that this catalog has not
    applied yet; they are applied when a commit conflicts with them (the
    contract: Conflict only once the conflicting change is applied)."""

    shared = True

    def __init__(self) -> None:
        self.index = 0
        self.modified: dict[str, int] = {}
        self.unseen: list[tuple[int, list[Entry]]] = []
        self.commits: list[list[Entry]] = []

    async def open(self, apply):  # type: ignore[no-untyped-def]
        self.apply = apply

    def write_elsewhere(self, *entries: Entry) -> None:
        self.index += 1
        self.modified.update(dict.fromkeys((e.key for e in entries), self.index))
        self.unseen.append((self.index, list(entries)))

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        self.commits.append(ops)
        if not all(c.holds(self.modified) for c in conditions):
            for index, entries in self.unseen:
                self.apply(index, entries)
            self.unseen.clear()
            raise Conflict("changed since it was read")
        self.index += 1
        self.modified.update(dict.fromkeys((op.key for op in ops), self.index))
        self.apply(self.index, ops)
        return self.index

    async def close(self) -> None:
        pass


def keys(commits: list[list[Entry]]) -> list[list[str]]:
    return [[e.key for e in entries] for entries in commits]


async def shared_catalog() -> tuple[Catalog, Lagging]:
    store = Lagging()
    cat = Catalog(store)
    await cat.open()
    await cat.put(node())
    return cat, store


async def test_on_a_shared_store_the_store_confirms_what_this_agent_found_unchanged() -> None:
    """This agent's copy may lack another agent's write: an unchanged write is
    judged on it, then its conditions go to the store alone (no entries: no
    index moves, nobody wakes)."""
    cat, store = await shared_catalog()
    await cat.write(writes.register, "n1", web(), False, False)
    before, commits = indexes(cat), len(store.commits)
    assert not await wakes(cat, cat.write(writes.register, "n1", web(), False, False))
    assert store.commits[commits:] == [[]] and indexes(cat) == before


async def test_on_a_shared_store_an_unchanged_write_another_agent_overtook_is_judged_again() -> (
    None
):
    """A conflict on the confirmation runs the plan again on the newer state."""
    cat, store = await shared_catalog()
    # A set after another agent's set of the key wins, though this agent still saw its value.
    await cat.write(kvwrites.kv_set, "k", b"mine")
    store.write_elsewhere(kv.encode(KvEntry("k", b"theirs")))
    commits = len(store.commits)
    assert await cat.write(kvwrites.kv_set, "k", b"mine") is True
    assert keys(store.commits[commits:]) == [[], ["k/k"]]  # refused, then written again
    assert cat.state.kv.get("k").value == b"mine"  # type: ignore[union-attr]
    # A cas on the index this agent saw fails once the key moved in the store.
    seen = cat.state.kv.get("k").modify_index  # type: ignore[union-attr]
    store.write_elsewhere(kv.encode(KvEntry("k", b"theirs")))
    assert await cat.write(kvwrites.kv_cas, "k", b"mine", seen) is False
    assert cat.state.kv.get("k").value == b"theirs"  # type: ignore[union-attr]
    # The same for an instance: registered again after another agent changed it.
    await cat.write(writes.register, "n1", web(), False, False)
    store.write_elsewhere(codec.put(service("w1", port=81)))
    commits = len(store.commits)
    await cat.write(writes.register, "n1", web(), False, False)
    assert keys(store.commits[commits:]) == [[], ["s/n1/w1"]]  # port 80 again, in the store
    assert cat.state.instance("n1", "w1").port == 80  # type: ignore[union-attr]


async def test_on_a_shared_store_a_failed_txn_commits_nothing() -> None:
    """A /v1/txn whose unchanged set is followed by a failing op drops its
    conditions with its ops (kvtxn.run): nothing is left to confirm, so no
    commit reaches the store (on etcd it would cost a raft write for nothing)."""
    cat, store = await shared_catalog()
    await cat.write(kvwrites.kv_set, "k", b"v")
    commits = len(store.commits)
    ops = [
        TxnOp(kv=KvOp(verb="set", key="k", value=b"v")),  # unchanged
        TxnOp(kv=KvOp(verb="get", key="missing")),  # fails the whole txn
    ]
    outcome = await cat.write(kvtxn.run, ops)
    assert [e.op_index for e in outcome.errors] == [1]
    assert store.commits[commits:] == []
