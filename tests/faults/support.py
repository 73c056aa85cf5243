"""Shared pieces of the fault and race tests: agents on a data dir, DNS, catalog views.

Every test here runs real `waypost agent` processes (tests/agentproc.py) on
loopback with ports picked by the kernel, on the sqlite store in a data dir of
its own, and polls with a deadline (tests/wait.py) instead of sleeping.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx

from ..agentproc import AgentProcess
from ..wait import until


def start_agent(data_dir: Path, node: str, *, dns: bool = True) -> AgentProcess:
    """`waypost agent --data-dir DATA_DIR --node NODE` (sqlite), HTTP and DNS on free ports."""
    return AgentProcess(
        "--data-dir", str(data_dir),
        "--http", "127.0.0.1:0",
        "--dns", "127.0.0.1:0" if dns else "off",
        "--node", node,
        # The race tests fire 400 connections at once from 127.0.0.1: past
        # Consul's default 200 a connection is refused with 429, and no race.
        "--http-max-conns-per-client", "0",
    ).start()  # fmt: skip


def ok(response: httpx.Response, what: str) -> httpx.Response:
    assert response.status_code == 200, f"{what}: HTTP {response.status_code} {response.text!r}"
    return response


def dns_answers(agent: AgentProcess, name: str, rdtype: str = "A") -> list[str]:
    """The answer records of one UDP query, as text; [] for NXDOMAIN or no data."""
    msg = dns.message.make_query(name, rdtype)
    reply = dns.query.udp(msg, agent.dns_host, port=agent.dns_port, timeout=5)
    assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), (
        f"DNS {rdtype} {name}: unexpected rcode {dns.rcode.to_text(reply.rcode())}"
    )
    wanted = dns.rdatatype.from_text(rdtype)
    return [rd.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rd in rrset]


def service_ids_by_node(http: httpx.Client) -> set[tuple[str, str]]:
    """Every (node, service ID) the catalog holds."""
    found = set()
    for node in ok(http.get("/v1/catalog/nodes"), "GET /v1/catalog/nodes").json():
        listing = ok(http.get(f"/v1/catalog/node/{node['Node']}"), "GET /v1/catalog/node").json()
        for sid in (listing or {}).get("Services", {}):
            found.add((node["Node"], sid))
    return found


def all_checks(http: httpx.Client) -> list[dict[str, Any]]:
    return ok(http.get("/v1/health/state/any"), "GET /v1/health/state/any").json()


def orphan_checks(http: httpx.Client) -> list[tuple[str, str, str]]:
    """Checks naming a ServiceID that the catalog does not hold: (node, check, service)."""
    services = service_ids_by_node(http)
    return sorted(
        (c["Node"], c["CheckID"], c["ServiceID"])
        for c in all_checks(http)
        if c["ServiceID"] and (c["Node"], c["ServiceID"]) not in services
    )


def members_cli(agent: AgentProcess) -> str:
    """`waypost members --http-addr <agent>`'s table."""
    done = subprocess.run(
        [sys.executable, "-m", "waypost.cli.main", "members", "--http-addr", agent.http_url],
        capture_output=True,
        text=True,
        timeout=30,
        env=agent.env,
    )
    assert done.returncode == 0, f"waypost members failed ({done.returncode}): {done.stderr}"
    return done.stdout


def eventually(probe: Any, timeout: float, failure: str | Any) -> Any:
    """until(probe) with a failure message that says what did not happen;
    `failure` may be a callable, to describe the state at the deadline."""
    try:
        return until(probe, timeout=timeout)
    except AssertionError:
        message = failure() if callable(failure) else failure
        raise AssertionError(f"{message} (still so after {timeout:.1f}s)") from None
