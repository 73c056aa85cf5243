"""What the tests of real proxies that follow waypost's DNS (HAProxy, Caddy)
share: named HTTP backends, starting and stopping the proxy process, and
counting which backend answered."""

from __future__ import annotations

import collections
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from .conftest import wait_for


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
    """An HTTP server on `address` that answers every GET with its name."""

    def __init__(self, name: str, address: str) -> None:
        self.server = ThreadingHTTPServer((address, 0), _Named)
        self.server.name = name  # type: ignore[attr-defined]
        self.address, self.port = self.server.server_address[:2]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running(
    name: str, cmd: list[str], ports: list[int], log: Path, **popen: object
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a proxy until it accepts on every port (failing with its output
    if it exits instead), and stop it afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, **popen)  # type: ignore[call-overload]

        def accepting(port: int) -> bool:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{log.read_text()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        try:
            for port in ports:
                wait_for(lambda p=port: accepting(p), bool, timeout=15)  # type: ignore[misc]
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def spread(url: str, requests: int) -> collections.Counter[str]:
    """Which backends answer `requests` requests through the proxy (errors count as "-")."""
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
