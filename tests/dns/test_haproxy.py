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
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ..agentproc import AgentProcess
from .conftest import deregister, instance, register, set_check, wait_for

CONFIG = Path(__file__).parents[2] / "examples" / "haproxy-dns" / "haproxy.cfg"


class _Named(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Backend:
    def __init__(self, name: str, address: str) -> None:
        self.server = ThreadingHTTPServer((address, 0), _Named)
        self.server.name = name  # type: ignore[attr-defined]
        self.address, self.port = self.server.server_address[:2]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    started = {f"b{n}": Backend(f"b{n}", f"127.0.0.{40 + n}") for n in range(1, 5)}
    yield started
    for backend in started.values():
        backend.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def haproxy(agent: AgentProcess, svc: str, tmp_path: Path) -> Iterator[str]:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if path is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    port = _free_port()
    env = {
        **os.environ,
        "WAYPOST_DNS": f"{agent.dns_host}:{agent.dns_port}",
        "FRONTEND": f"127.0.0.1:{port}",
        "SERVICE": svc,
    }
    log = tmp_path / "haproxy.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [path, "-db", "-f", str(CONFIG)], env=env, cwd=tmp_path, stdout=out, stderr=out
        )
        _wait_listening(proc, port, log)
        yield f"http://127.0.0.1:{port}/"
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until HAProxy accepts connections; fail with its output if it exits instead."""

    def accepting() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"haproxy exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(accepting, bool, timeout=15)


def _spread(url: str, requests: int = 24) -> collections.Counter[str]:
    """Which backends answer `requests` requests through HAProxy (503s count as "-")."""
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=5) as http:
        for _ in range(requests):
            try:
                response = http.get(url)
            except httpx.HTTPError:
                seen["-"] += 1
                continue
            seen[response.text if response.status_code == 200 else "-"] += 1
    return seen


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
    spread = _spread(haproxy, 30)
    assert set(spread) == {"b2", "b3", "b4"} and min(spread.values()) >= 8, spread
