"""Patroni keeps PostgreSQL's leader lock in waypost, as it does in Consul.

Two real Patroni members with real PostgreSQL servers (Debian's packages)
use one waypost agent as their Consul: one bootstraps and takes the leader
key (a KV key acquired with a session), the other follows it as a replica.
kill -9 of the leader's Patroni stops its session renewals; waypost
invalidates the session two session TTLs later (Consul's rule), deleting the
key (Patroni asks for Behavior delete), and the replica takes the lock and
promotes itself. Sampled throughout: the KV leader key never names two
members, and no two live Patroni processes call themselves leader.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import pytest

from ..agentproc import AgentProcess
from .cluster import LOOP_WAIT, TTL, PatroniCluster, available

pytestmark = pytest.mark.skipif(bool(available()), reason=available() or "ok")

BOOTSTRAP_TIMEOUT = 60.0


@pytest.fixture
def waypost() -> Iterator[AgentProcess]:
    # Patroni asks for a session TTL of ttl/2 = 3 s: below Consul's 10 s floor,
    # so the agent allows it (Patroni would otherwise raise its TTL to the floor).
    proc = AgentProcess(
        "--http", "127.0.0.1:0", "--dns", "off", "--node", "patroni-host", "--session-ttl-min", "2s"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def cluster(waypost: AgentProcess) -> Iterator[PatroniCluster]:
    c = PatroniCluster(waypost.http_port, members=2)
    yield c
    c.close()


def _leader_key(http: httpx.Client, scope: str) -> tuple[str, str]:
    """(the member the leader key names, its session), ("", "") when absent."""
    r = http.get(f"/v1/kv/service/{scope}/leader")
    if r.status_code == 404:
        return "", ""
    (entry,) = r.json()
    return base64.b64decode(entry["Value"] or "").decode(), entry.get("Session", "")


def _wait(probe, timeout: float, what: str, cluster: PatroniCluster):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout:g}s\n{cluster.logs()}")


def test_leader_election_and_failover_after_kill_9(
    waypost: AgentProcess, cluster: PatroniCluster
) -> None:
    first, second = cluster.members
    first.start()
    with httpx.Client(base_url=waypost.http_url, timeout=5) as http:
        _wait(
            lambda: first.role() in ("master", "primary"), BOOTSTRAP_TIMEOUT, "no leader", cluster
        )
        # Patroni may report its role a loop before its leader key is readable.
        holder, session = _wait(
            lambda: (key := _leader_key(http, cluster.scope))[0] == first.name and key,
            BOOTSTRAP_TIMEOUT,
            "no leader key naming the leader",
            cluster,
        )
        assert session
        (info,) = http.get(f"/v1/session/info/{session}").json()
        assert info["Behavior"] == "delete" and info["TTL"] == "3s"
        second.start()
        _wait(lambda: second.role() == "replica", BOOTSTRAP_TIMEOUT, "no replica", cluster)
        assert _leader_key(http, cluster.scope)[0] == first.name

        first.kill()
        killed = time.monotonic()
        holders: set[str] = set()
        while time.monotonic() - killed < 2 * TTL + 10:
            holder, _ = _leader_key(http, cluster.scope)
            live_leaders = [m.name for m in cluster.leaders()]
            assert len(live_leaders) <= 1, f"split brain: {live_leaders}"
            if holder:
                holders.add(holder)
            if holder == second.name and live_leaders == [second.name]:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no failover: leader key {holder!r}\n{cluster.logs()}")
        handover = time.monotonic() - killed
    assert holders <= {first.name, second.name}
    # The session lapses 2 x 3 s after its last renewal; then the replica's
    # next loop (1 s) takes the lock and its promotion reports within a few more.
    assert handover <= TTL + LOOP_WAIT + 5, handover
