"""Node identity: a stable node ID in the data dir, and what a renamed or replaced agent shows.

The ID lives in `<data-dir>/node-id`. Restarting on the same data dir under a
new `--node` name is the same agent renamed: its services move to the new
name and the old name disappears. Restarting after the ID file is gone is a
new agent: the old node belonged to an agent that died (kill -9), so it shows
failed and its services stop being answered.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from .support import all_checks, dns_answers, eventually, members_cli, ok, start_agent


def register_ttl_service(http: httpx.Client, name: str, sid: str) -> None:
    ok(
        http.put(
            "/v1/agent/service/register",
            json={
                "Name": name,
                "ID": sid,
                "Port": 7000,
                "Check": {"CheckID": f"{sid}-ttl", "TTL": "10m"},
            },
        ),
        f"register {sid}",
    )
    ok(http.put(f"/v1/agent/check/pass/{sid}-ttl"), f"pass {sid}-ttl")
    rows = ok(http.get(f"/v1/health/service/{name}", params={"passing": "1"}), name).json()
    assert [r["Service"]["ID"] for r in rows] == [sid]


def node_names(http: httpx.Client) -> list[str]:
    return [n["Node"] for n in ok(http.get("/v1/catalog/nodes"), "GET /v1/catalog/nodes").json()]


def members(http: httpx.Client) -> dict[str, int]:
    return {m["Name"]: m["Status"] for m in ok(http.get("/v1/agent/members"), "members").json()}


def node_id_of(data: Path) -> str:
    path = data / "node-id"
    assert path.is_file(), f"{path} does not exist after the agent started"
    text = path.read_text().strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise AssertionError(f"{path} holds {text!r}, not a UUID") from None


def test_node_id_is_a_uuid_kept_in_the_data_dir(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "a", dns=False)
    try:
        node_id = node_id_of(tmp_path)
        with agent.client() as http:
            reported = ok(http.get("/v1/agent/self"), "self").json()["Config"]["NodeID"]
        assert reported == node_id, (
            f"/v1/agent/self Config.NodeID {reported!r} != node-id {node_id!r}"
        )
        assert agent.stop() == 0
        agent = start_agent(tmp_path, "a", dns=False)
        assert node_id_of(tmp_path) == node_id, "node-id changed across a restart"
        with agent.client() as http:
            reported = ok(http.get("/v1/agent/self"), "self").json()["Config"]["NodeID"]
        assert reported == node_id, (
            f"after a restart Config.NodeID is {reported!r}, not {node_id!r}"
        )
    finally:
        agent.kill()


def test_restart_under_a_new_name_moves_the_services_to_it(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "a", dns=False)
    with agent.client() as http:
        register_ttl_service(http, "renamed", "renamed-1")
    assert agent.stop() == 0

    agent = start_agent(tmp_path, "b", dns=False)
    try:
        with agent.client() as http:
            services = ok(http.get("/v1/agent/services"), "GET /v1/agent/services").json()
            assert "renamed-1" in services, (
                f"after restarting as node b, /v1/agent/services does not list renamed-1 "
                f"(it lists {sorted(services)}): the service stayed on node a"
            )
            rows = ok(http.get("/v1/catalog/service/renamed"), "catalog service").json()
            assert [(r["Node"], r["ServiceID"]) for r in rows] == [("b", "renamed-1")], (
                f"/v1/catalog/service/renamed after the rename: {rows}"
            )
            checks = ok(http.get("/v1/agent/checks"), "GET /v1/agent/checks").json()
            assert checks.get("renamed-1-ttl", {}).get("ServiceID") == "renamed-1", (
                f"the service's TTL check is not on node b: /v1/agent/checks = {sorted(checks)}"
            )

            nodes = node_names(http)
            assert "a" not in nodes and "b" in nodes, f"/v1/catalog/nodes after the rename: {nodes}"
            on_a = [c for c in all_checks(http) if c["Node"] == "a"]
            assert not on_a, f"checks still reported on node a: {on_a}"
            assert ok(http.get("/v1/health/node/a"), "health node a").json() == []
            listing = http.get("/v1/catalog/node/a")
            assert listing.status_code == 404 or listing.json() is None, (
                f"/v1/catalog/node/a still answers {listing.text!r}"
            )
            assert "a" not in members(http), (
                f"node a still listed by /v1/agent/members: {members(http)}"
            )

            r = http.put("/v1/agent/service/deregister/renamed-1")
            assert r.status_code == 200, (
                f"deregistering renamed-1 on the renamed agent answered {r.status_code} {r.text!r}"
            )
            assert ok(http.get("/v1/catalog/service/renamed"), "catalog service").json() == []
    finally:
        agent.kill()


def test_a_new_agent_on_the_data_dir_sees_the_killed_agents_node_failed(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "a")
    with agent.client() as http:
        register_ttl_service(http, "orphaned", "orphaned-1")
    agent.kill()  # kill -9: agent a never says goodbye
    (tmp_path / "node-id").unlink(missing_ok=True)

    agent = start_agent(tmp_path, "b")
    try:
        with agent.client() as http:
            eventually(
                lambda: members(http).get("a") == 4,
                5,
                lambda: (
                    "node a of the killed agent is not failed (Status 4) in "
                    f"/v1/agent/members: {members(http)}"
                ),
            )
            assert members(http).get("b") == 1, f"the running agent b is not alive: {members(http)}"
            table = members_cli(agent)
            rows = {
                line.split()[0]: line.split() for line in table.splitlines()[1:] if line.strip()
            }
            assert "a" in rows and "failed" in rows["a"], (
                f"`waypost members` does not show a failed:\n{table}"
            )

            serf = [
                c for c in ok(http.get("/v1/health/node/a"), "node a").json()
                if c["CheckID"] == "serfHealth"
            ]  # fmt: skip
            assert [c["Status"] for c in serf] == ["critical"], f"serfHealth of node a: {serf}"
            rows_passing = ok(
                http.get("/v1/health/service/orphaned", params={"passing": "1"}), "orphaned"
            ).json()
            assert rows_passing == [], (
                f"the dead node's service is still in ?passing: "
                f"{[r['Service']['ID'] for r in rows_passing]}"
            )
        for rdtype in ("A", "SRV"):
            found = dns_answers(agent, "orphaned.service.consul", rdtype)
            assert found == [], f"DNS orphaned.service.consul {rdtype} still answers {found}"
    finally:
        agent.kill()
