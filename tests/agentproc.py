"""A real `waypost agent` process for tests and benchmarks.

Started with `python -m waypost.cli.main agent ... --http 127.0.0.1:0`; the
addresses it prints once ready are parsed, so tests never guess ports.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import httpx

READY_TIMEOUT = 30.0


class AgentProcess:
    def __init__(
        self, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> None:
        self.args = list(args)
        self.prefix = list(prefix)  # a command the agent runs under (benchmarks: valgrind)
        if "--data-dir" not in self.args and "--dev" not in self.args:
            # Never the user's own data dir; and each agent its own (it locks it).
            self.args += ["--data-dir", tempfile.mkdtemp(prefix="waypost-agent-")]
        if "--grpc" not in self.args:
            self.args += ["--grpc", "off"]  # never the default 8502; mesh tests pass 127.0.0.1:0
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.http_url = ""
        self.https_url = ""
        self.dns_host = ""
        self.dns_port = 0
        self.grpc_address = ""  # HOST:PORT of the xDS server, when it runs
        self.grpc_tls_address = ""  # HOST:PORT of its TLS port (--grpc-tls)
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> AgentProcess:
        cmd = [*self.prefix, sys.executable, "-m", "waypost.cli.main", "agent", *self.args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        # Under valgrind an agent starts some 20x slower.
        deadline = time.monotonic() + READY_TIMEOUT * (10 if self.prefix else 1)
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"agent exited early ({code}):\n{''.join(self.output)}")
            self.output.append(line)
            if m := re.match(r"HTTP API: (http://\S+)", line):
                self.http_url = m.group(1)
            elif m := re.match(r"gRPC \(xDS\): (\S+)", line):
                self.grpc_address = m.group(1)
            elif m := re.match(r"gRPC TLS \(xDS\): (\S+)", line):
                self.grpc_tls_address = m.group(1)
            elif m := re.match(r"HTTPS API: (https://\S+)", line):
                self.https_url = m.group(1)
            elif m := re.match(r"DNS: (\S+):(\d+)", line):
                self.dns_host, self.dns_port = m.group(1).strip("[]"), int(m.group(2))
            if line.startswith("waypost agent running"):
                break
        else:
            self.kill()
            raise RuntimeError("agent did not become ready:\n" + "".join(self.output))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.http_url, timeout=30, **kwargs)  # type: ignore[arg-type]

    @property
    def http_port(self) -> int:
        return int(self.http_url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self._reader is not None:
                self._reader.join(2)  # it ends at EOF, now that the process is gone
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL: the crash tests' way of stopping."""
        self.stop(signal.SIGKILL)
