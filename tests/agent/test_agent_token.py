"""The agent token: what a real agent's own writes of its node are authorized
as, with ACLs denying by default. A refused write is logged with what to do
and the agent serves on; a token created later takes effect at the next
anti-entropy pass (every 2 s)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from ..agentproc import AgentProcess

MGMT = "3f0c9a51-2b7e-4d38-9c61-5e4a7b2d8f10"
AGENT = "8d2e6b14-7c3a-4f59-a1e0-9b5c3d7e2f48"
NODE = "tok-node"


def start(agent_token: str = "", data_dir: str = "", dns: str = "off") -> AgentProcess:
    env = {"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": MGMT}
    if agent_token:
        env["WAYPOST_ACL_TOKEN_AGENT"] = agent_token
    args = ["--acl-default-policy", "deny", "--node", NODE, "--dns", dns]
    args += ["--data-dir", data_dir or tempfile.mkdtemp(prefix="waypost-agent-")]
    return AgentProcess(*args, env=env).start()


@pytest.fixture
def mgmt() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, headers={"X-Consul-Token": MGMT}) as client:
        yield client


def nodes(http: httpx.Client, agent: AgentProcess) -> list[str]:
    return [n["Node"] for n in http.get(f"{agent.http_url}/v1/catalog/nodes").json()]


def blocked_lines(agent: AgentProcess) -> list[str]:
    return [line for line in agent.output if "Node info update blocked by ACLs" in line]


def wait_for(condition, timeout: float = 8.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def make_token(http: httpx.Client, agent: AgentProcess, secret: str, **fields: object) -> None:
    r = http.put(f"{agent.http_url}/v1/acl/token", json={"SecretID": secret, **fields})
    assert r.status_code == 200, r.text


def test_without_any_token_the_agent_says_so_and_keeps_its_node_as_consuls_leader_does(
    mgmt: httpx.Client,
) -> None:
    agent = start()
    try:
        assert wait_for(lambda: blocked_lines(agent))
        line = blocked_lines(agent)[0]
        assert 'accessorID="anonymous token"' in line and "'node:write'" in line
        assert "acl.tokens.agent" in line and NODE in line  # what to do about it
        assert "kept all the same" in line
        # As Consul's leader registers every live member: the node, its
        # serfHealth and its sessions do not depend on the agent's token.
        checks = mgmt.get(f"{agent.http_url}/v1/health/node/{NODE}").json()
        assert [c["Status"] for c in checks if c["CheckID"] == "serfHealth"] == ["passing"]
        session = mgmt.put(f"{agent.http_url}/v1/session/create", json={"Node": NODE})
        assert session.status_code == 200, session.text
        body = {"Name": "web", "Port": 80}
        url = f"{agent.http_url}/v1/agent/service/register"
        assert mgmt.put(url, json=body).status_code == 200  # the API serves on
        time.sleep(2.5)  # an anti-entropy pass, refused again: not logged again
        assert len(blocked_lines(agent)) == 1
    finally:
        agent.stop()


def test_the_agent_and_default_tokens_set_through_the_api(
    mgmt: httpx.Client, agent: AgentProcess
) -> None:
    """`PUT /v1/agent/token/<kind>` (Consul's `acl set-agent-token`): the
    agent token is checked before the answer; the default token serves
    requests without one from then on."""
    acl = start(dns="127.0.0.1:0")
    url = f"{acl.http_url}/v1/agent/token"

    def dns_answers() -> int:
        query = dns.message.make_query("consul.service.consul", dns.rdatatype.A)
        return len(dns.query.udp(query, acl.dns_host, port=acl.dns_port, timeout=5).answer)

    try:
        made = mgmt.put(
            f"{acl.http_url}/v1/acl/token",
            json={"NodeIdentities": [{"NodeName": NODE, "Datacenter": "dc1"}]},
        ).json()
        assert httpx.put(f"{url}/agent", json={"Token": made["SecretID"]}).status_code == 403
        assert mgmt.put(f"{url}/agent", json={"Token": made["SecretID"]}).status_code == 200
        assert NODE in nodes(mgmt, acl)
        assert any("no longer blocked" in line for line in acl.output)  # before the answer
        anonymous = httpx.get(f"{acl.http_url}/v1/catalog/services").json()
        assert anonymous == {} and dns_answers() == 0  # the anonymous token reads nothing
        assert mgmt.put(f"{url}/default", json={"Token": made["SecretID"]}).status_code == 200
        assert "consul" in httpx.get(f"{acl.http_url}/v1/catalog/services").json()
        assert dns_answers() == 1  # DNS answers with the new default token at once
        assert mgmt.put(f"{url}/dns", json={"Token": "x"}).status_code == 501
        r = mgmt.put(f"{url}/nonsense", json={"Token": "x"})
        assert (r.status_code, r.text) == (404, 'Token "nonsense" is unknown')
        assert mgmt.put(f"{url}/agent", content=b"[").status_code == 400
    finally:
        acl.stop()
    r = httpx.put(f"{agent.http_url}/v1/agent/token/agent", json={"Token": "x"})
    assert (r.status_code, r.text) == (401, "ACL support disabled")  # ACLs off, as Consul


def test_a_token_created_later_unblocks_and_a_good_one_writes_at_start(
    mgmt: httpx.Client,
) -> None:
    data_dir = tempfile.mkdtemp(prefix="waypost-agent-")
    agent = start(AGENT, data_dir)
    try:
        assert wait_for(lambda: blocked_lines(agent))
        assert "does not exist" in blocked_lines(agent)[0]
        identity = [{"NodeName": NODE, "Datacenter": "dc1"}]
        make_token(mgmt, agent, AGENT, NodeIdentities=identity)
        assert wait_for(lambda: any("no longer blocked" in x for x in agent.output))
    finally:
        agent.stop()
    again = start(AGENT, data_dir)  # (a) a good agent token from the start
    try:
        checks = mgmt.get(f"{again.http_url}/v1/health/node/{NODE}").json()
        assert [c["Status"] for c in checks if c["CheckID"] == "serfHealth"] == ["passing"]
        assert blocked_lines(again) == []
    finally:
        again.stop()


def test_a_token_without_node_write_is_named_in_the_warning(mgmt: httpx.Client) -> None:
    agent = start(AGENT)
    try:
        assert wait_for(lambda: blocked_lines(agent))
        rules = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'
        r = mgmt.put(f"{agent.http_url}/v1/acl/policy", json={"Name": "ro", "Rules": rules})
        assert r.status_code == 200, r.text
        make_token(mgmt, agent, AGENT, Policies=[{"Name": "ro"}])
        assert wait_for(lambda: len(blocked_lines(agent)) == 2)  # the reason changed
        line = blocked_lines(agent)[1]
        accessor = mgmt.get(
            f"{agent.http_url}/v1/acl/token/self", headers={"X-Consul-Token": AGENT}
        )
        assert accessor.json()["AccessorID"] in line
        assert f"lacks permission 'node:write' on \\\"{NODE}\\\"" in line
    finally:
        agent.stop()
