"""py-consul, sync and asyncio, against a real agent process, unchanged."""

from __future__ import annotations

import asyncio
import threading

import consul
import consul.aio
import consul.exceptions
import pytest

from ..agentproc import AgentProcess
from ..servers import HealthServer
from ..wait import until


@pytest.fixture
def c(agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def test_register_and_discover_passing(c: consul.Consul, unique: str) -> None:
    with HealthServer() as server:
        check = consul.Check.http(server.url, interval="1s", timeout="1s", deregister="1m")
        assert c.agent.service.register(
            unique,
            service_id=f"{unique}-1",
            address="127.0.0.1",
            port=server.port,
            tags=["v1"],
            meta={"zone": "a"},
            check=check,
        )
        index, nodes = c.health.service(unique, passing=True)
        assert int(index) >= 1
        until(lambda: c.health.service(unique, passing=True)[1])
    _, nodes = c.health.service(unique, passing=True)
    (entry,) = nodes
    assert entry["Service"]["ID"] == f"{unique}-1"
    assert entry["Service"]["Port"] == server.port
    assert entry["Service"]["Tags"] == ["v1"]
    assert entry["Service"]["Meta"] == {"zone": "a"}
    assert {ch["CheckID"] for ch in entry["Checks"]} == {"serfHealth", f"service:{unique}-1"}
    assert c.agent.services()[f"{unique}-1"]["Service"] == unique
    assert c.agent.service.deregister(f"{unique}-1")
    assert c.health.service(unique)[1] == []


def test_ttl_check_lifecycle_and_maintenance(c: consul.Consul, unique: str) -> None:
    sid = f"{unique}-1"
    c.agent.service.register(unique, service_id=sid, port=80, check=consul.Check.ttl("30s"))
    check_id = f"service:{sid}"
    assert c.health.service(unique, passing=True)[1] == []  # critical until the first heartbeat
    assert c.agent.check.ttl_pass(check_id, "all good")
    assert len(c.health.service(unique, passing=True)[1]) == 1
    assert c.agent.checks()[check_id]["Output"] == "all good"
    c.agent.check.ttl_warn(check_id, "slow")
    assert c.health.service(unique, passing=True)[1] == []
    assert len(c.health.service(unique)[1]) == 1
    c.agent.check.ttl_pass(check_id)
    assert c.agent.service.maintenance(sid, True, "upgrade")
    assert c.health.service(unique, passing=True)[1] == []
    maint = [
        ch for ch in c.health.checks(unique)[1] if ch["CheckID"].startswith("_service_maintenance")
    ]
    assert maint[0]["Notes"] == "upgrade"
    c.agent.service.maintenance(sid, False)
    assert len(c.health.service(unique, passing=True)[1]) == 1


def test_tag_filter_catalog_and_state(c: consul.Consul, unique: str) -> None:
    c.agent.service.register(unique, service_id=f"{unique}-a", port=1, tags=["blue", "x"])
    c.agent.service.register(unique, service_id=f"{unique}-b", port=2, tags=["green"])
    _, rows = c.catalog.service(unique, tag="blue")
    assert [r["ServiceID"] for r in rows] == [f"{unique}-a"]
    _, services = c.catalog.services()
    assert sorted(services[unique]) == ["blue", "green", "x"]
    _, nodes = c.catalog.nodes()
    assert "test-node" in [n["Node"] for n in nodes]
    _, node = c.catalog.node("test-node")
    assert f"{unique}-a" in node["Services"]
    _, passing = c.health.state("passing")
    assert any(ch["CheckID"] == "serfHealth" for ch in passing)
    assert c.status.leader()
    assert c.agent.self()["Config"]["NodeName"] == "test-node"


def test_third_party_catalog_registration(c: consul.Consul, unique: str) -> None:
    node = f"{unique}-ext"
    assert c.catalog.register(
        node,
        "10.1.2.3",
        service={"Service": unique, "ID": "web1", "Port": 8080},
        check={"CheckID": "ext", "Name": "external", "Status": "passing", "ServiceID": "web1"},
    )
    _, rows = c.health.service(unique, passing=True)
    assert rows[0]["Node"]["Address"] == "10.1.2.3"
    assert rows[0]["Service"]["Port"] == 8080
    assert c.catalog.deregister(node)
    assert c.health.service(unique)[1] == []


def test_blocking_query_wakes_on_change(c: consul.Consul, unique: str) -> None:
    c.agent.service.register(unique, service_id=f"{unique}-1", port=1)
    index, _ = c.health.service(unique)
    result: list[object] = []

    def watcher() -> None:
        result.append(c.health.service(unique, index=index, wait="20s"))

    t = threading.Thread(target=watcher)
    t.start()
    c.agent.service.register(unique, service_id=f"{unique}-2", port=2)
    t.join(25)
    new_index, rows = result[0]  # type: ignore[misc]
    assert int(new_index) > int(index)
    assert len(rows) == 2


async def test_asyncio_client(agent: AgentProcess, unique: str) -> None:
    c = consul.aio.Consul(host="127.0.0.1", port=agent.http_port)
    try:
        await c.agent.service.register(
            unique, service_id=f"{unique}-1", port=5, check=consul.Check.ttl("10s")
        )
        await c.agent.check.ttl_pass(f"service:{unique}-1")
        index, rows = await c.health.service(unique, passing=True)
        assert [r["Service"]["ID"] for r in rows] == [f"{unique}-1"]
        waiter = asyncio.ensure_future(c.health.service(unique, index=index, wait="20s"))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await c.agent.check.ttl_fail(f"service:{unique}-1", "down")
        new_index, rows = await asyncio.wait_for(waiter, 25)
        assert int(new_index) > int(index)
        assert rows[0]["Checks"][-1]["Status"] == "critical"
    finally:
        await c.close()


def test_errors_map_to_py_consul_exceptions(c: consul.Consul, unique: str) -> None:
    with pytest.raises(consul.exceptions.BadRequest, match="Port must be between"):
        c.agent.service.register(unique, port=70000)
    # py-consul's boolean calls answer False on 404 rather than raising.
    assert c.agent.check.ttl_pass("no-such-check") is False
    assert c.agent.check.deregister("no-such-check") is False
