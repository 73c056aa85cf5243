"""The transports and service clients against real HTTP backends on loopback."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from waypost import (
    AsyncDiscovery,
    AsyncServiceClient,
    AsyncTransport,
    CircuitOpen,
    Discovery,
    NoHealthyInstances,
    RetryBudgetExhausted,
    ServiceClient,
    Transport,
)
from waypost.client import BreakerPolicy, HedgePolicy

from ._servers import Backend, FakeConsul

Make = Callable[[int], list[Backend]]


def dead_instance() -> tuple[str, str, int]:
    return ("dead", "127.0.0.1", 9)  # discard port: nothing listens, connect refused


async def test_service_client_spreads_and_keeps_host(consul: FakeConsul, backends: Make) -> None:
    bs = backends(3)
    consul.set("payment", [b.instance for b in bs])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient("payment", discovery=discovery, balancer="round_robin") as client,
    ):
        responses = [await client.get("/api/pay") for _ in range(30)]
    assert all(r.status_code == 200 for r in responses)
    assert Counter(r.json()["instance"] for r in responses) == {"b0": 10, "b1": 10, "b2": 10}
    assert responses[0].json()["host"] == "payment"
    assert responses[0].json()["path"] == "/api/pay"


async def test_transport_balances_service_hosts_and_passes_others(
    consul: FakeConsul, backends: Make
) -> None:
    [b] = backends(1)
    consul.set("payment", [b.instance])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        httpx.AsyncClient(transport=AsyncTransport(discovery)) as http,
    ):
        via_service = await http.get("http://payment/x")
        direct = await http.get(f"http://127.0.0.1:{b.port}/y")
    assert via_service.json()["instance"] == "b0"
    assert direct.json()["path"] == "/y"


async def test_connect_failure_retried_on_other_instance_even_for_post(
    consul: FakeConsul, backends: Make
) -> None:
    [b] = backends(1)
    consul.set("payment", [dead_instance(), b.instance])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient("payment", discovery=discovery, balancer="round_robin") as client,
    ):
        results = [await client.post("/pay", json={"n": k}) for k in range(10)]
    assert all(r.status_code == 200 for r in results)
    assert b.bodies[0] == b'{"n":0}'


async def test_5xx_retried_for_get_not_for_post(consul: FakeConsul, backends: Make) -> None:
    bad, good = backends(2)
    bad.status = 503
    consul.set("payment", [bad.instance, good.instance])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient(
            "payment", discovery=discovery, balancer="round_robin", breaker=None, outlier=None
        ) as client,
    ):
        gets = [(await client.get("/")).status_code for _ in range(10)]
        posts = [(await client.post("/")).status_code for _ in range(10)]
    assert gets == [200] * 10
    assert posts.count(503) == 5


async def test_breaker_stops_traffic_to_failing_instance(
    consul: FakeConsul, backends: Make
) -> None:
    bad, good = backends(2)
    bad.status = 500
    consul.set("payment", [bad.instance, good.instance])
    policy = BreakerPolicy(consecutive_failures=3, open_base=60)
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient(
            "payment", discovery=discovery, balancer="round_robin", breaker=policy, outlier=None
        ) as client,
    ):
        for _ in range(40):
            await client.post("/")
    assert bad.hits == 3
    assert good.hits == 37


async def test_all_open_raises_circuit_open(consul: FakeConsul, backends: Make) -> None:
    [bad] = backends(1)
    bad.status = 500
    consul.set("payment", [bad.instance])
    policy = BreakerPolicy(consecutive_failures=2, open_base=60)
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient("payment", discovery=discovery, breaker=policy, outlier=None) as client,
    ):
        await client.post("/")
        await client.post("/")
        with pytest.raises(CircuitOpen, match="payment"):
            await client.post("/")


async def test_no_instances(consul: FakeConsul) -> None:
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient("payment", discovery=discovery) as client,
    ):
        with pytest.raises(NoHealthyInstances, match="payment"):
            await client.get("/")


async def test_budget_exhausted_raises(consul: FakeConsul) -> None:
    consul.set("payment", [dead_instance(), ("dead2", "127.0.0.1", 7)])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient(
            "payment",
            discovery=discovery,
            retries=1,
            breaker=None,
            outlier=None,
            budget_ratio=0.0,
            budget_floor=0.1,  # one retry per 10 s window
        ) as client,
    ):
        with pytest.raises(httpx.ConnectError):
            await client.get("/")  # uses the only retry, then fails
        with pytest.raises(RetryBudgetExhausted, match="budget"):
            await client.get("/")


async def test_attempt_timeout_then_retry_elsewhere(consul: FakeConsul, backends: Make) -> None:
    slow, fast = backends(2)
    slow.delay = 3.0
    consul.set("payment", [slow.instance, fast.instance])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient(
            "payment", discovery=discovery, balancer="round_robin", attempt_timeout=0.5
        ) as client,
    ):
        results = await asyncio.gather(*(client.get("/") for _ in range(4)))
    assert all(r.json()["instance"] == "b1" for r in results)


async def test_hedging_beats_a_slow_instance(consul: FakeConsul, backends: Make) -> None:
    slow, fast = backends(2)
    slow.delay = 2.0
    consul.set("payment", [slow.instance, fast.instance])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient(
            "payment",
            discovery=discovery,
            balancer="round_robin",
            hedge=HedgePolicy(delay=0.05),
            breaker=None,
            outlier=None,
            total_timeout=1.5,
        ) as client,
    ):
        results = [await client.get("/") for _ in range(4)]
    assert [r.json()["instance"] for r in results] == ["b1"] * 4
    assert slow.hits >= 1  # first attempts that went there were beaten by hedges


async def test_total_timeout(consul: FakeConsul, backends: Make) -> None:
    [slow] = backends(1)
    slow.delay = 1.0
    consul.set("payment", [slow.instance])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient("payment", discovery=discovery, total_timeout=0.2) as client,
    ):
        with pytest.raises(httpx.TimeoutException, match="in total"):
            await client.get("/")


async def test_instance_changes_reach_the_router(consul: FakeConsul, backends: Make) -> None:
    a, b = backends(2)
    consul.set("payment", [a.instance])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient("payment", discovery=discovery) as client,
    ):
        assert (await client.get("/")).json()["instance"] == "b0"
        consul.set("payment", [b.instance])
        for _ in range(100):
            if (await client.get("/")).json()["instance"] == "b1":
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the new instance list never reached the router")


def test_sync_service_client(consul: FakeConsul, backends: Make) -> None:
    bs = backends(2)
    consul.set("payment", [dead_instance(), *(b.instance for b in bs)])
    with (
        Discovery(consul.url) as discovery,
        ServiceClient("payment", discovery=discovery, balancer="p2c") as client,
    ):
        results = [client.put("/x", content=b"hi") for _ in range(20)]
    assert all(r.status_code == 200 for r in results)
    assert {r.json()["instance"] for r in results} == {"b0", "b1"}


def test_sync_transport_in_plain_httpx(consul: FakeConsul, backends: Make) -> None:
    [b] = backends(1)
    consul.set("payment", [b.instance])
    with Discovery(consul.url) as discovery, httpx.Client(transport=Transport(discovery)) as http:
        assert http.get("http://payment/").json()["instance"] == "b0"


async def test_pick_and_report_without_http(consul: FakeConsul, backends: Make) -> None:
    bs = backends(2)
    consul.set("payment", [b.instance for b in bs])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient("payment", discovery=discovery) as client,
    ):
        client.router.update(await discovery.instances("payment"))
        inst = client.router.pick()
        client.router.report(inst, True, 0.004)
        assert client.router.statistics()["balancer"]["picks"] == 1


def test_which_hosts_are_services() -> None:
    from waypost.client._policy import is_service_host

    def check(url: str, services: set[str] | None = None) -> bool:
        return is_service_host(httpx.URL(url), services)

    assert check("http://payment/x")
    assert not check("http://payment:3000/x")  # explicit port: a real address
    assert not check("http://example.com/")
    assert not check("http://localhost/")
    assert not check("http://127.0.0.1/")
    assert not check("http://[::1]/")
    assert check("http://payment:3000/", {"payment"})
    assert not check("http://orders/", {"payment"})


async def test_ring_hash_key_header_is_sticky(consul: FakeConsul, backends: Make) -> None:
    bs = backends(4)
    consul.set("payment", [b.instance for b in bs])
    async with (
        AsyncDiscovery(consul.url) as discovery,
        AsyncServiceClient(
            "payment", discovery=discovery, balancer="ring_hash", key_header="X-User"
        ) as client,
    ):
        owners = {}
        for user in ("ann", "bob", "cy", "dee", "eve"):
            seen = {(await client.get("/", headers={"X-User": user})).json()["instance"]}
            seen |= {(await client.get("/", headers={"X-User": user})).json()["instance"]}
            assert len(seen) == 1
            owners[user] = seen.pop()
    assert len(set(owners.values())) >= 2
