"""`waypost k8s-sync` as a real process, between the fake API server and a real agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.resolver
import pytest

import waypost
from tests.agentproc import AgentProcess
from tests.wait import until

from .fakeapi import FakeKubeApi
from .objects import endpoint_slice, ep, node, service
from .syncproc import SyncProcess

StartSync = Callable[..., SyncProcess]


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    """A fresh agent per test: the sync owns node k8s-sync and removes what it did not write."""
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "agent-1"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def start_sync(kube: FakeKubeApi, agent: AgentProcess) -> Iterator[StartSync]:
    started: list[SyncProcess] = []

    def start(*args: str, identity: str = "sync-a") -> SyncProcess:
        proc = SyncProcess(
            kube.kubeconfig(), agent.http_url, "--resync", "2", *args, identity=identity
        )
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()


def health(agent: AgentProcess, name: str, passing: bool = False) -> list[dict[str, Any]]:
    with agent.client() as http:
        rows = http.get(
            f"/v1/health/service/{name}", params={"passing": "1"} if passing else {}
        ).json()
    return rows  # type: ignore[no-any-return]


def statuses(agent: AgentProcess, name: str) -> dict[str, str]:
    """address:port -> the readiness check's status."""
    found = {}
    for row in health(agent, name):
        check = next(c for c in row["Checks"] if c["Name"] == "Kubernetes Readiness Check")
        found[f"{row['Service']['Address']}:{row['Service']['Port']}"] = check["Status"]
    return found


def dns_addresses(agent: AgentProcess, name: str) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [agent.dns_host], agent.dns_port
    try:
        return sorted(r.address for r in resolver.resolve(f"{name}.service.consul", "A"))
    except dns.resolver.NXDOMAIN:
        return []


def test_endpoints_become_instances_that_follow_readiness(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    kube.put(service("payment", ports=[("http", 80)]))
    kube.put(
        endpoint_slice(
            "payment-a",
            "payment",
            [
                ep("127.0.1.1", pod="payment-0", node="n1", zone="z1"),
                ep("127.0.1.2", ready=False),
                ep("127.0.1.3", ready=False, serving=True, terminating=True),
            ],
        )
    )
    start_sync()
    until(lambda: len(health(agent, "payment")) == 3)
    assert statuses(agent, "payment") == {
        "127.0.1.1:8080": "passing",
        "127.0.1.2:8080": "critical",
        "127.0.1.3:8080": "warning",
    }
    row = next(r for r in health(agent, "payment") if r["Service"]["Address"] == "127.0.1.1")
    assert row["Node"]["Node"] == "k8s-sync"
    assert row["Service"]["Tags"] == ["k8s"]
    meta = row["Service"]["Meta"]
    assert meta["external-source"] == "kubernetes" and meta["external-k8s-ns"] == "default"
    assert meta["external-k8s-node-name"] == "n1" and meta["external-k8s-topology-zone"] == "z1"
    assert dns_addresses(agent, "payment") == ["127.0.1.1", "127.0.1.3"]  # warning is still in DNS
    # a readiness change reaches HTTP and DNS
    kube.put(
        endpoint_slice("payment-a", "payment", [ep("127.0.1.1", ready=False), ep("127.0.1.2")])
    )
    until(
        lambda: (
            statuses(agent, "payment")
            == {"127.0.1.1:8080": "critical", "127.0.1.2:8080": "passing"}
        )
    )
    assert [r["Service"]["Address"] for r in health(agent, "payment", passing=True)] == [
        "127.0.1.2"
    ]
    assert dns_addresses(agent, "payment") == ["127.0.1.2"]


def test_annotations_rename_tag_meta_port_and_opt_out(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    kube.put(
        service(
            "pay",
            ports=[("admin", 81), ("http", 80)],
            annotations={
                "consul.hashicorp.com/service-name": "payments",
                "consul.hashicorp.com/service-tags": "v2, blue",
                "consul.hashicorp.com/service-meta-team": "billing",
                "consul.hashicorp.com/service-port": "http",
            },
        )
    )
    kube.put(
        endpoint_slice("pay-a", "pay", [ep("127.0.2.1")], ports=[("admin", 9000), ("http", 8080)])
    )
    kube.put(service("hidden", annotations={"consul.hashicorp.com/service-sync": "false"}))
    kube.put(endpoint_slice("hidden-a", "hidden", [ep("127.0.2.9")]))
    start_sync()
    until(lambda: health(agent, "payments"))
    [row] = health(agent, "payments")
    assert row["Service"]["Tags"] == ["k8s", "v2", "blue"]
    assert row["Service"]["Meta"]["team"] == "billing"
    assert row["Service"]["Port"] == 8080  # the slice port named http
    assert health(agent, "pay") == [] and health(agent, "hidden") == []
    # opting out later removes it
    svc = kube.get("Service", "default", "pay")
    assert svc is not None
    svc["metadata"]["annotations"]["consul.hashicorp.com/service-sync"] = "false"
    kube.put(svc)
    until(lambda: health(agent, "payments") == [])


def test_headless_nodeport_and_loadbalancer_services(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    kube.put(service("db", headless=True))
    kube.put(endpoint_slice("db-a", "db", [ep("127.0.3.1"), ep("127.0.3.2")], ports=[("pg", 5432)]))
    kube.put(node("n1", internal="127.0.4.1", external="127.0.4.101"))
    kube.put(node("n2", internal="127.0.4.2"))
    kube.put(service("web", type_="NodePort", ports=[("http", 80)]))
    web = kube.get("Service", "default", "web")
    assert web is not None
    web["spec"]["ports"][0]["nodePort"] = 30080
    kube.put(web)
    kube.put(
        endpoint_slice("web-a", "web", [ep("127.0.5.1", node="n1"), ep("127.0.5.2", node="n2")])
    )
    kube.put(
        {
            **service("edge", type_="LoadBalancer", ports=[("https", 443)]),
            "status": {
                "loadBalancer": {"ingress": [{"ip": "127.0.6.1"}, {"hostname": "lb.example"}]}
            },
        }
    )
    start_sync()
    until(
        lambda: (
            len(health(agent, "db")) == 2
            and len(health(agent, "web")) == 2
            and health(agent, "edge")
        )
    )
    assert statuses(agent, "db") == {"127.0.3.1:5432": "passing", "127.0.3.2:5432": "passing"}
    assert statuses(agent, "web") == {"127.0.4.101:30080": "passing", "127.0.4.2:30080": "passing"}
    assert sorted(r["Service"]["Address"] for r in health(agent, "edge")) == [
        "127.0.6.1",
        "lb.example",
    ]


def test_deleted_service_and_endpoint_leave_the_registry(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    kube.put(service("a"))
    kube.put(endpoint_slice("a-1", "a", [ep("127.0.7.1"), ep("127.0.7.2")]))
    kube.put(service("b"))
    kube.put(endpoint_slice("b-1", "b", [ep("127.0.7.9")]))
    start_sync("--resync", "3600")  # the watch events alone, no reconcile to help
    until(lambda: len(health(agent, "a")) == 2 and health(agent, "b"))
    kube.put(endpoint_slice("a-1", "a", [ep("127.0.7.1")]))
    until(lambda: list(statuses(agent, "a")) == ["127.0.7.1:8080"])
    kube.delete("Service", "default", "b")
    kube.delete("EndpointSlice", "default", "b-1")
    until(lambda: health(agent, "b") == [])


def test_nothing_is_removed_before_the_first_full_sync_and_the_reconcile_repairs(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    stale = {
        "Node": "k8s-sync",
        "Address": "127.0.0.1",
        "SkipNodeUpdate": True,
        "Service": {
            "ID": "old-1",
            "Service": "old",
            "Address": "127.0.12.9",
            "Port": 80,
            "Tags": ["k8s"],
        },
    }
    with agent.client() as http:
        http.put("/v1/catalog/register", json=stale).raise_for_status()
    kube.put(service("payment"))
    kube.put(endpoint_slice("payment-a", "payment", [ep("127.0.12.1"), ep("127.0.12.2")]))
    # the first list is slow to come: refused once, retried after client-go's
    # first backoff (0.8 to 1.6 s); twice added 1.6 to 3.2 s and nothing else
    kube.fail(503, times=1, verb="list", resource="endpointslices")
    start_sync()
    time.sleep(0.5)  # within that backoff
    assert health(agent, "old"), "removed before the first full sync"
    until(lambda: health(agent, "old") == [] and len(health(agent, "payment")) == 2)
    # someone removes a synced instance by hand: the next full reconcile (2 s here) puts it back
    [victim, _] = health(agent, "payment")
    with agent.client() as http:
        body = {"Node": "k8s-sync", "ServiceID": victim["Service"]["ID"]}
        http.put("/v1/catalog/deregister", json=body).raise_for_status()
    assert len(health(agent, "payment")) == 1
    until(lambda: len(health(agent, "payment")) == 2, timeout=10)


def test_a_malformed_service_is_reported_and_breaks_nothing(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    bad = service("bad")
    bad["metadata"]["annotations"] = ["not", "a", "mapping"]
    kube.put(bad)
    kube.put(endpoint_slice("bad-a", "bad", [ep("127.0.13.1")]))
    kube.put(service("good"))
    kube.put(endpoint_slice("good-a", "good", [ep("127.0.13.2")]))
    sync = start_sync()
    until(lambda: health(agent, "good"))
    kube.put(endpoint_slice("good-a", "good", [ep("127.0.13.2"), ep("127.0.13.3")]))
    until(lambda: len(health(agent, "good")) == 2)  # still writing after the bad one
    assert health(agent, "bad") == []
    assert any("Service default/bad cannot be synced" in line for line in sync.output)
    assert not any("giving up the lease" in line for line in sync.output)


def test_agent_address_and_token_from_the_environment() -> None:
    from waypost.kubernetes.agent import AgentClient, agent_url

    assert agent_url(None, {}) == "http://127.0.0.1:8500"
    assert agent_url(None, {"CONSUL_HTTP_ADDR": "10.0.0.1:8500"}) == "http://10.0.0.1:8500"
    assert agent_url("https://agent:8501/", {"CONSUL_HTTP_ADDR": "x:1"}) == "https://agent:8501"
    with pytest.raises(waypost.ConfigError, match="not an http"):
        agent_url("ftp://agent", {})
    client = AgentClient("http://127.0.0.1:1", token="secret")
    assert all(c.headers["X-Consul-Token"] == "secret" for c in (client._http, *client._lanes))
    from waypost.cli import k8s_sync
    from waypost.cli.main import build_parser

    args = build_parser().parse_args(["k8s-sync", "--http-addr", "a:1", "--token", "t"])
    options = k8s_sync.options(args)
    assert (options.agent, options.token) == ("a:1", "t")


def test_only_the_chosen_namespaces(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    for ns in ("shop", "ops"):
        kube.put(service(f"{ns}-svc", namespace=ns))
        kube.put(endpoint_slice(f"{ns}-1", f"{ns}-svc", [ep("127.0.8.1")], namespace=ns))
    start_sync("--namespaces", "shop")
    until(lambda: health(agent, "shop-svc"))
    time.sleep(0.5)
    assert health(agent, "ops-svc") == []
    assert health(agent, "shop-svc")[0]["Service"]["Meta"]["external-k8s-ns"] == "shop"
    read = {
        ns for (verb, resource, ns) in kube.scopes if resource in ("services", "endpointslices")
    }
    assert read == {"shop"}  # only that namespace was listed and watched, not the whole cluster


def test_registry_services_become_external_name_services(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    kube.put(service("billing", labels={"team": "own"}))  # someone else's: never overwritten
    kube.put(service("from-k8s"))
    kube.put(endpoint_slice("from-k8s-1", "from-k8s", [ep("127.0.9.1")]))
    with agent.client() as http:
        for name in ("billing", "Ledger_v2", "mail"):
            http.put(
                "/v1/agent/service/register", json={"Name": name, "Port": 25}
            ).raise_for_status()
    start_sync("--to-k8s", "--k8s-namespace", "default")
    until(
        lambda: (
            kube.get("Service", "default", "mail") and kube.get("Service", "default", "ledger-v2")
        )
    )
    mail = kube.get("Service", "default", "mail")
    assert mail is not None
    assert mail["spec"] == {"type": "ExternalName", "externalName": "mail.service.consul"}
    assert mail["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "waypost-k8s-sync"}
    billing = kube.get("Service", "default", "billing")
    assert billing is not None and billing["metadata"]["labels"] == {"team": "own"}
    assert "externalName" not in billing["spec"]
    assert kube.get("Service", "default", "from-k8s") is not None  # not turned into ExternalName
    assert all(
        o["spec"].get("externalName") != "from-k8s.service.consul" for o in kube.list("Service")
    )
    assert (
        health(agent, "mail")[0]["Node"]["Node"] == "agent-1"
    )  # not synced back into the registry
    # a burst of registrations is one debounced pass, after a second of quiet
    before = len([1 for _, v, _, _ in kube.log if v == "create"])
    with agent.client() as http:
        for n in range(5):
            http.put(
                "/v1/agent/service/register", json={"Name": f"burst{n}", "Port": 1}
            ).raise_for_status()
        last = time.monotonic()
    until(lambda: all(kube.get("Service", "default", f"burst{n}") for n in range(5)))
    creates = [t for t, v, _, _ in kube.log if v == "create"][before:]
    assert len(creates) == 5
    assert min(creates) - last >= 0.9, min(creates) - last
    # gone from the registry: gone from Kubernetes; deleting ours by hand: put back
    with agent.client() as http:
        http.put("/v1/agent/service/deregister/mail").raise_for_status()
    until(lambda: kube.get("Service", "default", "mail") is None)
    kube.delete("Service", "default", "burst0")
    until(lambda: kube.get("Service", "default", "burst0") is not None)


class ScriptedAgent:
    """`AgentClient.services` answering a scripted series of registry changes."""

    def __init__(self, changes_at: list[float]) -> None:
        self.started = time.monotonic()
        self.changes_at = changes_at

    def index_now(self) -> int:
        now = time.monotonic() - self.started
        return 1 + sum(1 for t in self.changes_at if t <= now)

    async def services(self, index: int, wait: float) -> tuple[int, dict[str, list[str]]]:
        deadline = time.monotonic() + wait
        while self.index_now() <= index and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        current = self.index_now()
        return current, {f"s{n}": [] for n in range(current)}


@pytest.mark.parametrize(
    ("changes_at", "expect_after"),
    [
        ([0.0, 0.05, 0.1], 0.1 + 0.2),  # a burst: one pass once quiet for QUIET
        ([0.05 * n for n in range(40)], 0.5),  # never quiet: one pass at MAX_DELAY
    ],
)
async def test_registry_changes_are_debounced(
    monkeypatch: pytest.MonkeyPatch, changes_at: list[float], expect_after: float
) -> None:
    from waypost.kubernetes import to_k8s

    monkeypatch.setattr(to_k8s, "QUIET", 0.2)
    monkeypatch.setattr(to_k8s, "MAX_DELAY", 0.5)
    syncer = to_k8s.ToKubernetes.__new__(to_k8s.ToKubernetes)
    syncer.agent = ScriptedAgent([0.3 + t for t in changes_at])  # type: ignore[assignment]
    syncer.wanted = None
    index, _ = await syncer._debounced(0)  # the first read answers at once
    syncer.wanted = {}
    assert index == 1
    index, _ = await syncer._debounced(index)
    took = time.monotonic() - syncer.agent.started - 0.3  # type: ignore[attr-defined]
    assert expect_after - 0.05 <= took <= expect_after + 0.15, took
    assert index == syncer.agent.index_now()  # type: ignore[attr-defined]


def test_two_replicas_one_leader_and_handover_after_kill_9(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    kube.put(service("payment"))
    kube.put(endpoint_slice("payment-a", "payment", [ep("127.0.10.1")]))
    a = start_sync(identity="sync-a")
    a.wait_for("leading as sync-a")
    b = start_sync(identity="sync-b")
    until(lambda: health(agent, "payment"))
    time.sleep(1.0)
    assert a.leading and not b.leading
    lease = kube.get("Lease", "default", "waypost-k8s-sync")
    assert lease is not None and lease["spec"]["holderIdentity"] == "sync-a"
    a.kill()
    killed = time.monotonic()
    b.wait_for("leading as sync-b", timeout=10)
    assert time.monotonic() - killed < 2 + 0.25 + 1.5  # lease duration + retry period + slack
    kube.put(endpoint_slice("payment-a", "payment", [ep("127.0.10.1"), ep("127.0.10.2")]))
    until(lambda: len(health(agent, "payment")) == 2)
    lease = kube.get("Lease", "default", "waypost-k8s-sync")
    assert lease is not None and lease["spec"]["holderIdentity"] == "sync-b"
    assert lease["spec"]["leaseTransitions"] == 1


def test_clean_exit_releases_the_lease_at_once(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    a = start_sync(identity="sync-a")
    a.wait_for("leading as sync-a")
    b = start_sync(identity="sync-b")
    assert a.stop() == 0
    stopped = time.monotonic()
    b.wait_for("leading as sync-b", timeout=10)
    assert time.monotonic() - stopped < 1.5  # no need to wait for the lease to run out


def test_kill_9_mid_stream_then_restart_leaves_nothing_duplicated_or_stale(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    for n in range(40):
        kube.put(service(f"svc{n}"))
        kube.put(
            endpoint_slice(f"svc{n}-a", f"svc{n}", [ep(f"127.1.{n}.{k}") for k in range(1, 6)])
        )
    first = start_sync()
    until(lambda: health(agent, "svc3"), timeout=30)
    first.kill()  # mid-stream: the first full sync may not have finished
    for n in range(0, 40, 4):  # meanwhile: Services go away, others change
        kube.delete("Service", "default", f"svc{n}")
        kube.delete("EndpointSlice", "default", f"svc{n}-a")
    for n in range(1, 40, 4):
        kube.put(
            endpoint_slice(f"svc{n}-a", f"svc{n}", [ep(f"127.1.{n}.{k}") for k in range(3, 8)])
        )
    start_sync(identity="sync-a")  # the same replica, restarted
    with agent.client() as http:

        def settled() -> bool:
            node = http.get("/v1/catalog/node/k8s-sync").json()
            return len(node["Services"]) == 30 * 5

        until(settled, timeout=30)
        node = http.get("/v1/catalog/node/k8s-sync").json()
    by_service: dict[str, list[str]] = {}
    for svc in node["Services"].values():
        by_service.setdefault(svc["Service"], []).append(svc["Address"])
    assert sorted(by_service) == sorted(f"svc{n}" for n in range(40) if n % 4)
    for name, addresses in by_service.items():
        n = int(name[3:])
        want = range(3, 8) if n % 4 == 1 else range(1, 6)
        assert sorted(addresses) == sorted(f"127.1.{n}.{k}" for k in want), name


def test_the_sync_uses_only_the_permissions_its_rbac_grants(
    kube: FakeKubeApi, agent: AgentProcess, start_sync: StartSync
) -> None:
    from waypost.kubernetes.permissions import PERMISSIONS

    kube.put(service("payment"))
    kube.put(endpoint_slice("payment-a", "payment", [ep("127.0.11.1")]))
    with agent.client() as http:
        http.put("/v1/agent/service/register", json={"Name": "mail", "Port": 25}).raise_for_status()
    sync = start_sync("--to-k8s", "--k8s-namespace", "default")
    until(lambda: health(agent, "payment") and kube.get("Service", "default", "mail"))
    with agent.client() as http:
        http.put("/v1/agent/service/deregister/mail").raise_for_status()
    until(lambda: kube.get("Service", "default", "mail") is None)
    sync.stop()
    granted = {(g, r, v) for g, r, verbs, _ in PERMISSIONS for v in verbs}
    used = {(g, r, v) for (v, g, r) in kube.requests}
    assert used <= granted, used - granted
    assert {
        ("", "services", "create"),
        ("", "services", "delete"),
        ("coordination.k8s.io", "leases", "update"),
    } <= used


async def test_a_readiness_flip_during_a_write_in_flight_is_written_too(
    agent: AgentProcess,
) -> None:
    """Endpoint unready, and ready again while that write is in flight: the agent
    must end up with `passing`, at once, not at the next full reconcile."""
    from waypost.kubernetes.agent import AgentClient
    from waypost.kubernetes.registrations import Registration
    from waypost.kubernetes.to_registry import ToRegistry

    gate, entered = asyncio.Event(), asyncio.Event()
    gate.set()
    written: list[str] = []

    class HeldAgent(AgentClient):
        async def register(self, reg: Registration, lane: int = 0) -> None:
            written.append(reg.status)
            entered.set()
            await gate.wait()
            await super().register(reg, lane)

    async def ready() -> None:
        return None

    client = HeldAgent(agent.http_url)
    sync = ToRegistry(client, resync=3600)
    sync.services_handler.on_event("ADDED", service("payment"), None)
    sync.slices_handler.on_event(
        "ADDED", endpoint_slice("payment-a", "payment", [ep("127.0.40.1")]), None
    )
    task = asyncio.create_task(sync.run(ready))
    try:
        await asyncio.wait_for(_until_status(agent, "passing"), 10)
        assert written == ["passing"]
        gate.clear()
        entered.clear()
        unready = endpoint_slice("payment-a", "payment", [ep("127.0.40.1", ready=False)])
        sync.slices_handler.on_event("MODIFIED", unready, None)
        await asyncio.wait_for(entered.wait(), 10)  # the "critical" write is in flight
        again = endpoint_slice("payment-a", "payment", [ep("127.0.40.1")])
        sync.slices_handler.on_event("MODIFIED", again, unready)
        gate.set()
        await asyncio.wait_for(_until_written(written, 3), 5)
        assert written == ["passing", "critical", "passing"]
        await asyncio.wait_for(_until_status(agent, "passing"), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


async def _until_status(agent: AgentProcess, status: str) -> None:
    """Until the instance's readiness check is `status`."""
    while list((await asyncio.to_thread(statuses, agent, "payment")).values()) != [status]:
        await asyncio.sleep(0.02)


async def _until_written(written: list[str], count: int) -> None:
    while len(written) < count:
        await asyncio.sleep(0.01)
