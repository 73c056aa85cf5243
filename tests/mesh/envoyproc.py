"""Real Envoy processes started as users start them (`waypost connect envoy`,
`waypost gateway`), and plain `http.server` apps that know nothing of the mesh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ..agentproc import AgentProcess
from ..servers import free_port

READY_TIMEOUT = 20.0


def agent_with_xds(node: str, *extra: str, env: dict[str, str] | None = None) -> AgentProcess:
    """A dev agent (not yet started) with its xDS server on a free loopback port,
    DNS off, named `node`; `extra` are further agent flags."""
    return AgentProcess(
        "--dev",
        "--http",
        "127.0.0.1:0",
        "--dns",
        "off",
        "--grpc",
        "127.0.0.1:0",
        "--node",
        node,
        *extra,
        env=env,
    )


class EnvoyProcess:
    """`waypost connect envoy ...` or `waypost gateway ...`: the process becomes Envoy (exec)."""

    def __init__(self, *command: str, http_url: str, grpc_address: str) -> None:
        self.admin_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="envoy-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "waypost.cli.main",
            *command,
            "--http-addr",
            http_url,
            "--grpc-addr",
            grpc_address,
            "--admin-bind",
            f"127.0.0.1:{self.admin_port}",
            "--",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    @classmethod
    def sidecar(cls, agent: AgentProcess, service: str) -> EnvoyProcess:
        """`waypost connect envoy -sidecar-for SERVICE` against `agent` (no token, plain gRPC)."""
        return cls(
            "connect",
            "envoy",
            "-sidecar-for",
            service,
            http_url=agent.http_url,
            grpc_address=agent.grpc_address,
        )

    @classmethod
    def gateway(cls, agent: AgentProcess, port: int) -> EnvoyProcess:
        """`waypost gateway --listen 127.0.0.1:PORT` against `agent`."""
        return cls(
            "gateway",
            "--listen",
            f"127.0.0.1:{port}",
            http_url=agent.http_url,
            grpc_address=agent.grpc_address,
        )

    def wait_ready(self) -> EnvoyProcess:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.admin}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Envoy did not become ready:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stats(self) -> dict[str, int]:
        text = httpx.get(f"{self.admin}/stats", timeout=5).text
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                out[name] = int(value)
        return out

    def hosts(self, cluster: str) -> list[int]:
        """The ports of the endpoints Envoy has for `cluster` right now."""
        data = httpx.get(f"{self.admin}/clusters?format=json", timeout=5).json()
        for status in data.get("cluster_statuses", []):
            if status["name"] == cluster:
                return sorted(
                    h["address"]["socket_address"]["port_value"]
                    for h in status.get("host_statuses", [])
                )
        return []

    def cert_serials(self) -> list[str]:
        data: dict[str, Any] = httpx.get(f"{self.admin}/certs", timeout=5).json()
        return sorted(
            c["serial_number"]
            for cert in data.get("certificates", [])
            for c in cert.get("cert_chain", [])
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


# Python's http.server, with its output buffered so that each response leaves in
# one write: a kill -9 then lands before a response (a reset the sidecar retries)
# or after it, never between the headers and the body (which no proxy can retry).
_SERVE = (
    "import http.server as h, sys; h.SimpleHTTPRequestHandler.wbufsize = -1; "
    "h.test(HandlerClass=h.SimpleHTTPRequestHandler, port=int(sys.argv[1]), bind='127.0.0.1')"
)


class App:
    """Python's `http.server` serving one file that names the app."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix=f"app-{name}-")
        Path(self.dir, "index.html").write_text(name)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> App:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(self.port)],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"app {self.name} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
