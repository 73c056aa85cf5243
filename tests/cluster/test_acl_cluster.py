"""ACL state in the shared store: agents on one etcd cluster share tokens and
bootstrap once between them."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ..agentproc import AgentProcess
from ..wait import until

pytestmark = pytest.mark.etcd


@pytest.fixture
def acl_agents(store_url: str) -> Iterator[list[AgentProcess]]:
    agents = [
        AgentProcess("--store", store_url, "--node", f"acl-{n}", "--http", "127.0.0.1:0",
                     "--dns", "off", "--acl-default-policy", "deny").start()
        for n in "ab"
    ]  # fmt: skip
    yield agents
    for proc in agents:
        proc.stop()


def test_agents_on_one_store_bootstrap_once_and_share_tokens(
    acl_agents: list[AgentProcess],
) -> None:
    a, b = acl_agents
    with ThreadPoolExecutor(2) as pool:  # both at once: the plan guards the ACL range
        answers = list(
            pool.map(lambda p: httpx.put(f"{p.http_url}/v1/acl/bootstrap", timeout=30), (a, b))
        )
    assert sorted(r.status_code for r in answers) == [200, 403]
    boss = next(r for r in answers if r.status_code == 200).json()["SecretID"]
    headers = {"X-Consul-Token": boss}
    policy = {"Name": "web-writer", "Rules": 'service "web" { policy = "write" }'}
    assert (
        httpx.put(
            f"{a.http_url}/v1/acl/policy", json=policy, headers=headers, timeout=30
        ).status_code
        == 200
    )
    token = {"Policies": [{"Name": "web-writer"}]}
    secret = httpx.put(
        f"{a.http_url}/v1/acl/token", json=token, headers=headers, timeout=30
    ).json()["SecretID"]

    def register_on_b() -> int:
        body = {"Name": "web", "Port": 80}
        url = f"{b.http_url}/v1/agent/service/register"
        return httpx.put(url, json=body, headers={"X-Consul-Token": secret}, timeout=30).status_code

    assert until(lambda: register_on_b() == 200)  # the token reached B through the store's watch
    denied = httpx.put(
        f"{b.http_url}/v1/agent/service/register",
        json={"Name": "db"},
        headers={"X-Consul-Token": secret},
        timeout=30,
    )
    assert denied.status_code == 403
