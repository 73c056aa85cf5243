"""Cluster mode end to end: real agent processes sharing a real three-member etcd cluster."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import consul
import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from ..agentproc import AgentProcess
from ..etcd_cluster import EtcdCluster
from ..wait import until
from .conftest import LEASE_TTL, AgentFactory

pytestmark = pytest.mark.etcd


def register(agent: AgentProcess, name: str, sid: str, port: int = 3000) -> httpx.Response:
    body = {"Name": name, "ID": sid, "Address": "10.0.0.5", "Port": port}
    return httpx.put(f"{agent.http_url}/v1/agent/service/register", json=body, timeout=30)


def health(agent: AgentProcess, name: str, **params: str) -> httpx.Response:
    return httpx.get(f"{agent.http_url}/v1/health/service/{name}", params=params, timeout=30)


def serf_status(agent: AgentProcess, name: str) -> str | None:
    rows = health(agent, name).json()
    checks = [c for row in rows for c in row["Checks"] if c["CheckID"] == "serfHealth"]
    return checks[0]["Status"] if checks else None


def test_registered_through_a_is_visible_through_b_over_http_and_dns(
    start_agent: AgentFactory,
) -> None:
    a, b = start_agent("node-a"), start_agent("node-b")
    assert register(a, "payment", "payment-1").status_code == 200

    client = consul.Consul(host="127.0.0.1", port=b.http_port)
    index, rows = until(lambda: (r := client.health.service("payment", passing=True))[1] and r)
    assert [(r["Node"]["Node"], r["Service"]["ID"]) for r in rows] == [("node-a", "payment-1")]
    assert int(index) == int(health(a, "payment").headers["X-Consul-Index"])

    query = dns.message.make_query("payment.service.consul", dns.rdatatype.A)
    answer = dns.query.udp(query, b.dns_host, port=b.dns_port, timeout=5)
    assert [item.address for rrset in answer.answer for item in rrset] == ["10.0.0.5"]


def test_a_blocking_query_on_b_wakes_for_a_write_through_a(start_agent: AgentFactory) -> None:
    a, b = start_agent("node-a"), start_agent("node-b")
    assert register(a, "web", "web-1").status_code == 200
    index = int(until(lambda: (r := health(b, "web")).json() and r).headers["X-Consul-Index"])

    idle = time.monotonic()
    assert health(b, "web", index=str(index), wait="1s").headers["X-Consul-Index"] == str(index)
    assert time.monotonic() - idle >= 0.9, "the blocking query did not block"

    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(health, b, "web", index=str(index), wait="30s")
        assert register(a, "web", "web-2", port=3001).status_code == 200
        woke = pending.result(timeout=30)
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"the blocking query took {elapsed:.1f}s to wake"
    assert int(woke.headers["X-Consul-Index"]) > index
    assert sorted(r["Service"]["ID"] for r in woke.json()) == ["web-1", "web-2"]


def test_killing_agent_a_turns_its_instances_critical_on_b(start_agent: AgentFactory) -> None:
    a, b = start_agent("node-a"), start_agent("node-b")
    assert register(a, "api", "api-on-a").status_code == 200
    assert register(b, "api", "api-on-b", port=3001).status_code == 200
    until(lambda: len(health(b, "api", passing="").json()) == 2)

    killed = time.monotonic()
    a.kill()
    until(lambda: serf_status(b, "api") == "critical" or None, timeout=LEASE_TTL + 12)
    assert time.monotonic() - killed < LEASE_TTL + 6, "node-a took too long to turn critical"
    rows = health(b, "api").json()
    status = {r["Service"]["ID"]: {c["Status"] for c in r["Checks"]} for r in rows}
    assert "critical" in status["api-on-a"]
    assert status["api-on-b"] == {"passing"}
    assert [r["Service"]["ID"] for r in health(b, "api", passing="").json()] == ["api-on-b"]


def test_killing_the_etcd_leader_mid_stream_loses_no_acknowledged_registration(
    start_agent: AgentFactory, cluster: EtcdCluster
) -> None:
    a, b = start_agent("node-a"), start_agent("node-b")
    acked: list[str] = []
    refused: list[int] = []
    after_kill: list[str] = []
    killed = threading.Event()

    def worker(w: int) -> None:
        for i in range(40):
            sid = f"stream-{w}-{i}"
            response = register(a, "stream", sid)
            if response.status_code == 200:
                acked.append(sid)
                if killed.is_set():
                    after_kill.append(sid)
            else:
                refused.append(response.status_code)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(worker, w) for w in range(4)]
        until(lambda: len(acked) >= 30, timeout=60)
        leader = cluster.leader()
        assert leader is not None
        cluster.kill(leader)
        killed.set()
        for future in futures:
            future.result(timeout=120)

    assert len(after_kill) >= 20, f"writes did not resume after the election ({refused=})"
    assert all(code >= 500 for code in refused)
    for agent in (a, b):
        seen = until(lambda ag=agent: _ids_when_complete(ag, acked), timeout=30)
        assert not set(acked) - seen


def _ids_when_complete(agent: AgentProcess, acked: list[str]) -> set[str] | None:
    rows = httpx.get(f"{agent.http_url}/v1/catalog/service/stream", timeout=30).json()
    ids = {row["ServiceID"] for row in rows}
    return ids if ids >= set(acked) else None


def test_etcd_down_serves_stale_reads_refuses_writes_then_recovers(
    start_agent: AgentFactory, cluster: EtcdCluster
) -> None:
    a, b = start_agent("node-a"), start_agent("node-b")
    assert register(a, "db", "db-1").status_code == 200
    until(lambda: health(b, "db").json())
    cluster.kill_all()

    stale = until(lambda: (r := health(b, "db")).headers["X-Consul-KnownLeader"] == "false" and r)
    assert [row["Service"]["ID"] for row in stale.json()] == ["db-1"]
    first = int(stale.headers["X-Consul-LastContact"])
    until(lambda: int(health(b, "db").headers["X-Consul-LastContact"]) > first + 500)

    started = time.monotonic()
    refused = register(a, "db", "db-2")
    assert refused.status_code == 503 and "etcd" in refused.text, refused.text
    assert time.monotonic() - started < 5, "a write to a dead etcd must be refused quickly"
    assert health(b, "db", consistent="").status_code >= 500

    cluster.heal()
    until(lambda: health(b, "db").headers["X-Consul-KnownLeader"] == "true", timeout=30)
    assert until(lambda: register(a, "db", "db-2").status_code == 200, timeout=20)
    until(lambda: len(health(b, "db").json()) == 2)
    assert health(b, "db").headers["X-Consul-LastContact"] == "0"
    assert health(b, "db", consistent="").status_code == 200


def ttl_check_status(agent: AgentProcess, name: str) -> list[str]:
    rows = health(agent, name).json()
    return [c["Status"] for row in rows for c in row["Checks"] if c["CheckID"] != "serfHealth"]


def test_a_ttl_expiry_during_an_etcd_outage_fails_closed_then_reaches_every_agent(
    start_agent: AgentFactory, cluster: EtcdCluster
) -> None:
    a, b = start_agent("node-a"), start_agent("node-b")
    body = {
        "Name": "pay",
        "ID": "pay-1",
        "Port": 3000,
        "Check": {"CheckID": "pay-ttl", "TTL": "2s"},
    }
    assert httpx.put(f"{a.http_url}/v1/agent/service/register", json=body).status_code == 200
    assert httpx.put(f"{a.http_url}/v1/agent/check/pass/pay-ttl").status_code == 200
    until(lambda: health(b, "pay", passing="").json())
    cluster.kill_all()
    # The expiry cannot be stored: agent A must stop answering pay-1 as healthy at once.
    until(lambda: health(a, "pay", passing="").json() == [] or None, timeout=10)
    assert ttl_check_status(a, "pay") == ["critical"]
    cluster.heal()
    healed = time.monotonic()
    until(lambda: ttl_check_status(b, "pay") == ["critical"] or None, timeout=30)
    # etcd's own recovery (a leader election, the agents' reconnects) comes first;
    # the stored status follows within the runner's retry interval.
    assert time.monotonic() - healed < 15, "the held status took too long to reach agent B"
    assert health(b, "pay", passing="").json() == []


def test_agents_on_one_store_share_one_ca_and_the_intentions(start_agent: AgentFactory) -> None:
    """The CA's root is a catalog record: the second agent finds it instead of making one;
    a leaf signed by either verifies against the other's roots; intentions go everywhere."""
    from cryptography import x509

    a = start_agent("ca-a")
    roots_a = httpx.get(f"{a.http_url}/v1/connect/ca/roots", timeout=30).json()
    b = start_agent("ca-b")  # finds A's root: it does not make (or put) one of its own
    roots_b = httpx.get(f"{b.http_url}/v1/connect/ca/roots", timeout=30).json()
    assert roots_a == roots_b and len(roots_a["Roots"]) == 1
    assert httpx.get(f"{a.http_url}/v1/connect/ca/roots", timeout=30).json() == roots_a
    root = x509.load_pem_x509_certificate(roots_a["Roots"][0]["RootCert"].encode())
    leaf = httpx.get(f"{b.http_url}/v1/agent/connect/ca/leaf/web", timeout=30).json()
    x509.load_pem_x509_certificate(leaf["CertPEM"].encode()).verify_directly_issued_by(root)
    assert leaf["ServiceURI"].startswith(f"spiffe://{roots_a['TrustDomain']}/")
    pair = {"source": "web", "destination": "db"}
    put = httpx.put(
        f"{a.http_url}/v1/connect/intentions/exact",
        params=pair,
        json={"Action": "deny"},
        timeout=30,
    )
    assert put.json() is True
    until(
        lambda: (
            httpx.get(f"{b.http_url}/v1/connect/intentions/check", params=pair, timeout=30).json()
            == {"Allowed": False}
        ),
        timeout=5,
    )
