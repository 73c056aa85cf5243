"""DNS test helpers: real agent processes, queries through dnspython and dig.

The session agent of tests/conftest.py (DNS on a free port, domain consul.,
node `test-node`) serves most tests; `tuned_agent` is one with every DNS flag
set. Services are registered through the HTTP API with TTL checks, which the
tests turn passing, warning or critical at will.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rdatatype
import pytest

from ..agentproc import AgentProcess

T = TypeVar("T")
_names = itertools.count()


@pytest.fixture
def svc() -> str:
    """A service name no other DNS test uses on the shared agent."""
    return f"dns{next(_names)}"


@pytest.fixture(scope="module")
def tuned_agent() -> Iterator[AgentProcess]:
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "tuned",
        "--datacenter", "east", "--alt-domain", "waypost.", "--dns-only-passing",
        "--dns-service-ttl", "ttlsvc=7s", "--dns-service-ttl", "*=3s", "--dns-node-ttl", "11s",
    ).start()  # fmt: skip
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def register(agent: AgentProcess, body: dict[str, Any]) -> None:
    with agent.client() as http:
        response = http.put("/v1/agent/service/register", json=body)
    assert response.status_code == 200, response.text


def deregister(agent: AgentProcess, service_id: str) -> None:
    with agent.client() as http:
        response = http.put(f"/v1/agent/service/deregister/{service_id}")
    assert response.status_code == 200, response.text


def instance(name: str, n: int, address: str = "", port: int = 0, **extra: Any) -> dict[str, Any]:
    """A registration body with a TTL check `<name>-<n>-ttl` that starts passing."""
    body = {
        "Name": name,
        "ID": f"{name}-{n}",
        "Address": address,
        "Port": port or 8000 + n,
        "Check": {"CheckID": f"{name}-{n}-ttl", "TTL": "10m", "Status": "passing"},
    }
    body.update(extra)
    return body


def set_check(agent: AgentProcess, check_id: str, status: str) -> None:
    verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
    with agent.client() as http:
        response = http.put(f"/v1/agent/check/{verb}/{check_id}")
    assert response.status_code == 200, response.text


def query(
    agent: AgentProcess,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    payload: int | None = None,
) -> dns.message.Message:
    """One query through dnspython; `payload` turns EDNS on with that UDP size."""
    kwargs: dict[str, Any] = {}
    if payload is not None:
        kwargs = {"use_edns": 0, "payload": payload}
    msg = dns.message.make_query(name, rdtype, **kwargs)
    if tcp:
        return dns.query.tcp(msg, agent.dns_host, port=agent.dns_port, timeout=5)
    return dns.query.udp(msg, agent.dns_host, port=agent.dns_port, timeout=5, ignore_trailing=False)


def answers(msg: dns.message.Message, rdtype: str | None = None) -> list[str]:
    """The answer section's rdata as text, optionally of one type."""
    wanted = dns.rdatatype.from_text(rdtype) if rdtype else None
    return [
        rd.to_text()
        for rrset in msg.answer
        if wanted is None or rrset.rdtype == wanted
        for rd in rrset
    ]


def dig(agent: AgentProcess, *args: str) -> str:
    """Run dig against the agent; skips the test when dig is not installed."""
    path = shutil.which("dig")
    if path is None:
        pytest.skip("dig is not installed (Debian package bind9-dnsutils)")
    cmd = [path, f"@{agent.dns_host}", "-p", str(agent.dns_port), "+time=5", "+tries=1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout


def wait_for(probe: Callable[[], T], accept: Callable[[T], bool], timeout: float = 10.0) -> T:
    """Call `probe` until `accept` likes its result; fail with the last one at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        time.sleep(0.02)
