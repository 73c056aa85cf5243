"""The client against a real `waypost agent` process (session fixture `agent`).

Registration, discovery (HTTP long-poll and DNS), watches and the service
client end to end. Waits are for conditions (a watch yielding, a poll
succeeding), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from waypost import (
    AsyncDiscovery,
    AsyncServiceClient,
    Discovery,
    HttpCheck,
    Instance,
    Registration,
    TcpCheck,
    TtlCheck,
)

from ..wait import until
from ._servers import Backend

Make = Callable[[int], list[Backend]]
_names = itertools.count()


def name() -> str:
    return f"clientsvc{os.getpid()}x{next(_names)}"


async def wait_for(
    discovery: AsyncDiscovery, service: str, ok: Callable[[list[Instance]], bool]
) -> list[Instance]:
    async def scan() -> list[Instance]:
        async for instances in discovery.watch(service):
            if ok(instances):
                return instances
        raise AssertionError("watch ended")

    return await asyncio.wait_for(scan(), 20)


def agent_services(agent: Any) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{agent.http_url}/v1/agent/services").json()
    return result


async def test_register_http_check_discover_and_deregister(agent: Any, backends: Make) -> None:
    svc = name()
    [b] = backends(1)
    async with AsyncDiscovery(agent.http_url, wait=5) as discovery:
        reg = Registration(svc, port=b.port, agent=agent.http_url, check=HttpCheck(interval="1s"))
        async with reg:
            assert reg.id.startswith(f"{svc}-") and reg.id.endswith(f"-{b.port}")
            assert reg.address == "127.0.0.1"  # detected from the route to the agent
            [inst] = await wait_for(discovery, svc, lambda found: len(found) == 1)
            assert (inst.id, inst.address, inst.port) == (reg.id, "127.0.0.1", b.port)
            assert b.hits >= 1  # the agent ran the HTTP check against it
        assert reg.id not in agent_services(agent)
        await wait_for(discovery, svc, lambda found: found == [])


async def test_ttl_heartbeat_and_reregistration(agent: Any) -> None:
    svc = name()
    reg = Registration(svc, port=4100, agent=agent.http_url, check=TtlCheck(ttl="1.5s"))
    async with AsyncDiscovery(agent.http_url, wait=5) as discovery, reg:
        await wait_for(discovery, svc, lambda found: len(found) == 1)  # heartbeat made it pass
        httpx.put(f"{agent.http_url}/v1/agent/service/deregister/{reg.id}")  # agent "forgets"
        await wait_for(discovery, svc, lambda found: found == [])
        await wait_for(discovery, svc, lambda found: len(found) == 1)
        assert reg.registrations >= 2 and reg.heartbeats >= 1


def test_sync_registration_and_discovery(agent: Any, backends: Make) -> None:
    svc = name()
    [b] = backends(1)
    reg = Registration(
        svc, port=b.port, agent=agent.http_url, check=TcpCheck(interval="1s"), tags=["v2"]
    )
    with reg, Discovery(agent.http_url, ttl=0.05) as discovery:
        found = until(lambda: discovery.instances(svc), timeout=20)
        assert found[0].tags == ("v2",) and found[0].port == b.port
        assert discovery.instances(svc, tag="v2") == found
        assert discovery.instances(svc, tag="v3") == []
        assert reg.id in agent_services(agent)
    assert reg.id not in agent_services(agent)


async def test_service_client_through_agent(agent: Any, backends: Make) -> None:
    svc = name()
    bs = backends(3)
    regs = [
        Registration(
            svc, port=b.port, id=f"{svc}-{k}", agent=agent.http_url, check=HttpCheck(interval="1s")
        )
        for k, b in enumerate(bs)
    ]
    async with AsyncDiscovery(agent.http_url, wait=5) as discovery:
        for reg in regs:
            await reg.__aenter__()
        try:
            await wait_for(discovery, svc, lambda found: len(found) == 3)
            async with AsyncServiceClient(svc, discovery=discovery, balancer="p2c") as client:
                results = await asyncio.gather(*(client.get("/work") for _ in range(60)))
            assert {r.json()["instance"] for r in results} == {b.name for b in bs}
        finally:
            for reg in regs:
                await reg.__aexit__(None, None, None)


@pytest.fixture
def dns_url(agent: Any) -> str:
    if not agent.dns_port:
        pytest.skip("the agent runs without DNS")
    return f"dns://{agent.dns_host}:{agent.dns_port}"


async def test_dns_source_srv(agent: Any, backends: Make, dns_url: str) -> None:
    svc = name()
    bs = backends(2)
    regs = [
        Registration(
            svc,
            port=b.port,
            id=f"{svc}-{k}",
            agent=agent.http_url,
            check=TtlCheck(ttl="10s"),
            tags=["blue"],
        )
        for k, b in enumerate(bs)
    ]
    for reg in regs:
        await reg.__aenter__()
        httpx.put(f"{agent.http_url}/v1/agent/check/pass/{reg.check_id}")
    try:
        async with AsyncDiscovery(dns_url, ttl=0.1) as discovery:
            found = await wait_for(discovery, svc, lambda found: len(found) == 2)
        assert sorted(i.port for i in found) == sorted(b.port for b in bs)
        assert {i.address for i in found} == {"127.0.0.1"}
        with Discovery(dns_url) as sync_discovery:
            assert len(sync_discovery.instances(svc)) == 2
            assert len(sync_discovery.instances(svc, tag="blue")) == 2
            assert sync_discovery.instances(svc, tag="green") == []
            assert sync_discovery.instances(name()) == []  # NXDOMAIN: no instances
    finally:
        for reg in regs:
            await reg.__aexit__(None, None, None)


_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time, waypost
    reg = waypost.Registration(sys.argv[1], port=4200, agent=sys.argv[2])
    with reg:
        print("REGISTERED", reg.id, flush=True)
        time.sleep(60)
    """
)


def test_sigterm_deregisters_before_exit(agent: Any) -> None:
    svc = name()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_SCRIPT, svc, agent.http_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("REGISTERED"), line
    service_id = line.split()[1]
    assert service_id in agent_services(agent)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # still ends the way SIGTERM ends a process
    assert service_id not in agent_services(agent)
