"""KV, sessions, locks and events across agents sharing a real etcd cluster."""

from __future__ import annotations

import threading
import time

import consul
import httpx
import pytest

from ..agentproc import AgentProcess
from ..wait import until
from .conftest import LEASE_TTL, AgentFactory

pytestmark = pytest.mark.etcd
TTL_ONLY = 6  # seconds: see test_kill_9_of_the_owning_agent_releases_its_locks_elsewhere


def _clients(
    start_agent: AgentFactory, *extra: str
) -> tuple[AgentProcess, consul.Consul, consul.Consul]:
    """Two agents, once each sees both nodes' serfHealth passing (a session
    is refused while one of its checks is critical)."""
    a, b = start_agent("node-a", *extra), start_agent("node-b", *extra)
    ca = consul.Consul(host="127.0.0.1", port=a.http_port)
    cb = consul.Consul(host="127.0.0.1", port=b.http_port)

    def live(c: consul.Consul) -> bool:
        _, checks = c.health.state("any")
        serf = {ch["Node"]: ch["Status"] for ch in checks if ch["CheckID"] == "serfHealth"}
        return serf == {"node-a": "passing", "node-b": "passing"}

    until(lambda: live(ca) and live(cb))
    return a, ca, cb


def test_kv_and_events_reach_the_other_agent(start_agent: AgentFactory) -> None:
    _, ca, cb = _clients(start_agent)
    assert ca.kv.put("app/config", "v1")
    index, entry = until(lambda: (r := cb.kv.get("app/config"))[1] and r)
    assert entry["Value"] == b"v1"
    out: list[object] = []
    waiter = threading.Thread(
        target=lambda: out.append(cb.kv.get("app/", recurse=True, index=index, wait="20s"))
    )
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()
    assert ca.kv.put("app/config", "v2", cas=entry["ModifyIndex"])
    waiter.join(10)
    _, rows = out[0]  # type: ignore[misc]
    assert [r["Value"] for r in rows] == [b"v2"]
    # A compare-and-swap through b against a's write: the index b saw is stale.
    assert cb.kv.put("app/config", "v3", cas=entry["ModifyIndex"]) is False

    fired = ca.event.fire("deploy", "p1")
    until(lambda: [e["ID"] for e in cb.event.list(name="deploy")[1]] == [fired["ID"]])
    other = cb.event.fire("deploy", "p2")  # both agents fire: the ring takes both, in order
    until(lambda: [e["ID"] for e in ca.event.list(name="deploy")[1]] == [fired["ID"], other["ID"]])


def test_one_lock_holder_across_agents(start_agent: AgentFactory) -> None:
    _, ca, cb = _clients(start_agent)
    sa = ca.session.create(lock_delay=0)
    sb = cb.session.create(lock_delay=0)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda c=c, s=s: results.append(c.kv.put("leader", s, acquire=s)))
        for c, s in ((ca, sa), (cb, sb)) * 4
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    _, entry = ca.kv.get("leader")
    holder = entry["Session"]
    assert holder in (sa, sb)
    # The holder's own re-acquisitions succeed; every attempt of the other fails.
    assert results.count(True) == 4 and results.count(False) == 4
    assert entry["LockIndex"] == 1


def test_kill_9_of_the_owning_agent_releases_its_locks_elsewhere(
    start_agent: AgentFactory,
) -> None:
    """The session names node-a with serfHealth (the default): once node-a's
    lease lapses, node-b sees serfHealth critical and invalidates it."""
    # A TTL of 6 s (Consul's shortest is 10 s, lowered with the agent's flag;
    # py-consul refuses less than 10, so that one is created over plain HTTP):
    # it still outlives node-a's lease (LEASE_TTL + 5 s at most, asserted
    # below), and its invalidation at 2 x TTL comes 8 s sooner than at 10 s.
    a, ca, cb = _clients(start_agent, "--session-ttl-min", "1s")
    session = ca.session.create(name="a-lock", lock_delay=0)
    body = {"Name": "ttl-only", "Checks": [], "TTL": f"{TTL_ONLY}s", "LockDelay": "0s"}
    created = httpx.put(f"{a.http_url}/v1/session/create", json=body, timeout=30)
    assert created.status_code == 200, created.text
    ttl_only = created.json()["ID"]
    assert ca.kv.put("jobs/leader", "node-a", acquire=session)
    until(lambda: cb.kv.get("jobs/leader")[1] and cb.session.info(ttl_only)[1])
    index, _ = cb.session.info(session)
    a.kill()
    killed = time.monotonic()
    _, gone = cb.session.info(session, index=index, wait=f"{LEASE_TTL * 4}s")
    assert gone is None, "node-b did not invalidate node-a's session"
    elapsed = time.monotonic() - killed
    assert elapsed < LEASE_TTL + 5, elapsed
    _, entry = cb.kv.get("jobs/leader")
    assert "Session" not in entry and entry["Value"] == b"node-a"
    sb = cb.session.create(lock_delay=0)
    assert cb.kv.put("jobs/leader", "node-b", acquire=sb)
    # A session without checks outlives its agent until its TTL lapses (x2),
    # which node-b's timer (started when it saw the session) enforces.
    assert cb.session.info(ttl_only)[1] is not None
    until(lambda: cb.session.info(ttl_only)[1] is None, timeout=TTL_ONLY * 2 + 5)
