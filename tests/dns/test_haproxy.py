"""Server-side discovery through DNS with a load balancer nobody here wrote.

HAProxy runs examples/haproxy-dns/haproxy.cfg unchanged: its resolvers ask
the agent for `_<svc>._tcp.service.consul` SRV records and a server-template
fills its slots from them. Real HTTP backends, each on its own loopback
address, answer with their name. The test checks that HAProxy sends traffic
only to healthy instances and follows registrations, health changes and
deregistrations, with deadlines instead of sleeps.
"""

from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..agentproc import AgentProcess
from ..servers import free_port
from .conftest import deregister, instance, register, set_check, wait_for
from .proxied import Backend, running, spread

CONFIG = Path(__file__).parents[2] / "examples" / "haproxy-dns" / "haproxy.cfg"


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    started = {f"b{n}": Backend(f"b{n}", f"127.0.0.{40 + n}") for n in range(1, 5)}
    yield started
    for backend in started.values():
        backend.close()


@pytest.fixture
def haproxy(agent: AgentProcess, svc: str, tmp_path: Path) -> Iterator[str]:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if path is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    port = free_port()
    env = {
        **os.environ,
        "WAYPOST_DNS": f"{agent.dns_host}:{agent.dns_port}",
        "FRONTEND": f"127.0.0.1:{port}",
        "SERVICE": svc,
    }
    cmd = [path, "-db", "-f", str(CONFIG)]
    with running("haproxy", cmd, [port], tmp_path / "haproxy.log", env=env, cwd=tmp_path):
        yield f"http://127.0.0.1:{port}/"


def _spread(url: str, requests: int = 24) -> collections.Counter[str]:
    """Which backends answer through HAProxy (its 503s count as "-")."""
    return spread(url, requests)


def test_haproxy_follows_health_and_registrations(
    agent: AgentProcess, svc: str, backends: dict[str, Backend], haproxy: str
) -> None:
    for n in (1, 2, 3):
        b = backends[f"b{n}"]
        register(agent, instance(svc, n, b.address, b.port))

    def serves(names: set[str]) -> object:
        return lambda seen: set(seen) == names

    wait_for(lambda: _spread(haproxy), serves({"b1", "b2", "b3"}), timeout=20)

    set_check(agent, f"{svc}-2-ttl", "critical")
    wait_for(lambda: _spread(haproxy), serves({"b1", "b3"}), timeout=20)
    assert set(_spread(haproxy, 30)) == {"b1", "b3"}  # and it stays that way

    b4 = backends["b4"]
    register(agent, instance(svc, 4, b4.address, b4.port))
    wait_for(lambda: _spread(haproxy), serves({"b1", "b3", "b4"}), timeout=20)

    deregister(agent, f"{svc}-1")
    set_check(agent, f"{svc}-2-ttl", "passing")
    wait_for(lambda: _spread(haproxy), serves({"b2", "b3", "b4"}), timeout=20)
    seen = _spread(haproxy, 30)
    assert set(seen) == {"b2", "b3", "b4"} and min(seen.values()) >= 8, seen
