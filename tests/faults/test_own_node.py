"""The agent's own node is the agent's: catalog writes may not remove or rewrite it.

`PUT /v1/catalog/deregister` and `/v1/catalog/register` naming the agent's own
node are refused with 400 and a message naming the node, and change nothing:
node record, address, serfHealth check and DNS answers stay as they were.
Third-party nodes are still the catalog API's to write, and so is the node a
failed waypost agent left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..agentproc import AgentProcess
from .support import dns_answers, members_cli, ok, start_agent

OWN = "own-node"


@pytest.fixture
def own(tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent on node `own-node` with one local service, local-web (node address)."""
    agent = start_agent(tmp_path, OWN)
    with agent.client() as http:
        ok(
            http.put(
                "/v1/agent/service/register",
                json={
                    "Name": "local-web",
                    "ID": "local-web-1",
                    "Port": 9000,
                    "Check": {"CheckID": "local-web-ttl", "TTL": "10m", "Status": "passing"},
                },
            ),
            "register local-web-1",
        )
    try:
        yield agent
    finally:
        agent.kill()


def snapshot(http: httpx.Client) -> dict[str, Any]:
    """What must not move: the node record, its serfHealth check, its local service."""
    listing = ok(http.get(f"/v1/catalog/node/{OWN}"), "GET /v1/catalog/node").json()
    checks = ok(http.get(f"/v1/health/node/{OWN}"), "GET /v1/health/node").json()
    return {
        "node": listing and listing["Node"],
        "services": listing and sorted(listing["Services"]),
        "serfHealth": next((c for c in checks if c["CheckID"] == "serfHealth"), None),
    }


def assert_unchanged(agent: AgentProcess, before: dict[str, Any], after_what: str) -> None:
    with agent.client() as http:
        after = snapshot(http)
        nodes = [n["Node"] for n in ok(http.get("/v1/catalog/nodes"), "nodes").json()]
    assert OWN in nodes, f"after {after_what} the agent's own node is gone from /v1/catalog/nodes"
    assert after["node"] == before["node"], (
        f"after {after_what} the own node record changed: {before['node']} -> {after['node']}"
    )
    assert after["serfHealth"] == before["serfHealth"], (
        f"after {after_what} serfHealth changed: {before['serfHealth']} -> {after['serfHealth']}"
    )
    assert after["services"] == before["services"], (
        f"after {after_what} the own node's services changed: "
        f"{before['services']} -> {after['services']}"
    )
    addresses = dns_answers(agent, "local-web.service.consul", "A")
    assert addresses == ["127.0.0.1"], (
        f"after {after_what} DNS local-web.service.consul A answers {addresses}, "
        "not the node's address 127.0.0.1"
    )


def test_catalog_deregister_of_the_own_node_is_refused(own: AgentProcess) -> None:
    with own.client() as http:
        before = snapshot(http)
        assert before["serfHealth"] is not None and before["serfHealth"]["Status"] == "passing"
        r = http.put("/v1/catalog/deregister", json={"Node": OWN})
    assert r.status_code == 400, (
        f"PUT /v1/catalog/deregister of the agent's own node answered {r.status_code} "
        f"{r.text!r}, not 400"
    )
    assert OWN in r.text, f"the refusal does not name the node {OWN!r}: {r.text!r}"
    assert_unchanged(own, before, "a catalog deregistration of the own node")


def test_catalog_register_rewriting_the_own_node_is_refused(own: AgentProcess) -> None:
    with own.client() as http:
        before = snapshot(http)
        assert before["node"]["Address"] == "127.0.0.1"
        r = http.put("/v1/catalog/register", json={"Node": OWN, "Address": "6.6.6.6"})
    assert r.status_code == 400, (
        f"PUT /v1/catalog/register of the agent's own node with Address 6.6.6.6 answered "
        f"{r.status_code} {r.text!r}, not 400"
    )
    assert OWN in r.text, f"the refusal does not name the node {OWN!r}: {r.text!r}"
    assert_unchanged(own, before, "a catalog registration of the own node at 6.6.6.6")


def test_catalog_writes_for_a_third_party_node_still_work(own: AgentProcess) -> None:
    with own.client() as http:
        r = http.put(
            "/v1/catalog/register",
            json={
                "Node": "external-db",
                "Address": "10.1.1.1",
                "Service": {"ID": "pg-1", "Service": "pg", "Port": 5432},
                "Check": {"CheckID": "pg-alive", "ServiceID": "pg-1", "Status": "passing"},
            },
        )
        assert r.status_code == 200, f"third-party registration refused: {r.status_code} {r.text!r}"
        rows = ok(http.get("/v1/health/service/pg", params={"passing": "1"}), "pg").json()
        assert [(x["Node"]["Node"], x["Node"]["Address"], x["Service"]["ID"]) for x in rows] == [
            ("external-db", "10.1.1.1", "pg-1")
        ]
        assert dns_answers(own, "pg.service.consul", "A") == ["10.1.1.1"]

        r = http.put("/v1/catalog/register", json={"Node": "external-db", "Address": "10.1.1.2"})
        assert r.status_code == 200, f"third-party address change refused: {r.text!r}"
        node = ok(http.get("/v1/catalog/node/external-db"), "node").json()["Node"]
        assert node["Address"] == "10.1.1.2"

        r = http.put("/v1/catalog/deregister", json={"Node": "external-db"})
        assert r.status_code == 200, f"third-party deregistration refused: {r.text!r}"
        nodes = [n["Node"] for n in ok(http.get("/v1/catalog/nodes"), "nodes").json()]
        assert "external-db" not in nodes
        assert ok(http.get("/v1/catalog/service/pg"), "pg").json() == []


def test_catalog_deregister_of_a_failed_agents_node_is_allowed(tmp_path: Path) -> None:
    gone = start_agent(tmp_path, "gone-node")
    with gone.client() as http:
        ok(
            http.put(
                "/v1/agent/service/register",
                json={"Name": "gone-svc", "ID": "gone-1", "Check": {"TTL": "10m"}},
            ),
            "register gone-1",
        )
        ok(http.put("/v1/agent/check/pass/service:gone-1"), "pass gone-1")
    gone.kill()
    (tmp_path / "node-id").unlink(missing_ok=True)  # a new agent, not gone-node restarted

    agent = start_agent(tmp_path, OWN)
    try:
        with agent.client() as http:
            members = {m["Name"] for m in ok(http.get("/v1/agent/members"), "members").json()}
            assert "gone-node" in members, f"the failed agent's node is not a member: {members}"
            r = http.put("/v1/catalog/deregister", json={"Node": "gone-node"})
            assert r.status_code == 200, (
                f"deregistering the node of a failed agent answered {r.status_code} {r.text!r}"
            )
            nodes = [n["Node"] for n in ok(http.get("/v1/catalog/nodes"), "nodes").json()]
            assert "gone-node" not in nodes and OWN in nodes, f"nodes afterwards: {nodes}"
            assert ok(http.get("/v1/catalog/service/gone-svc"), "gone-svc").json() == []
            members = {m["Name"] for m in ok(http.get("/v1/agent/members"), "members").json()}
            assert members == {OWN}, f"members afterwards: {members}"
        assert "gone-node" not in members_cli(agent)
    finally:
        agent.kill()
