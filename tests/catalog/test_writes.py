"""The one write path: plans validated against the state they land on.

Races are made deterministic with a store that yields before every commit,
so two plans are always made on the same state before either commits: the
situation a busy agent's group commit produces by chance.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from waypost import ConfigError, NotFoundError, ValidationError
from waypost.catalog import Catalog, Node, writes
from waypost.catalog.definitions import (
    CatalogDeregistration,
    CatalogRegistration,
    CheckRegistration,
    ServiceRegistration,
)
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
