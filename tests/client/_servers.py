"""Small real HTTP servers for the client tests, on loopback only.

`FakeConsul` answers `/v1/health/service/<name>` like Consul (blocking queries
included) from a dict the test controls; `Backend` is a service instance that
answers with its own name and can be told to fail or be slow. Both run in a
thread (a stdlib `ThreadingHTTPServer`), so sync and async tests can use them.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients that hang up (cancelled hedges, timeouts) are expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    owner: Any

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.owner.handle(self)

    do_POST = do_PUT = do_DELETE = do_GET


def _start(owner: Any, host: str) -> tuple[_Server, threading.Thread]:
    handler = type("Handler", (_Handler,), {"owner": owner})
    server = _Server((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    return server, thread


class FakeConsul:
    """A Consul-like `/v1/health/service` endpoint with blocking queries."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.services: dict[str, list[dict[str, Any]]] = {}
        self.index = 10
        self.indexes: dict[str, int] = {}
        self.fail = False
        self.requests: list[str] = []
        self._cond = threading.Condition()
        self.server, self.thread = _start(self, host)
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def set(self, service: str, instances: list[tuple[str, str, int]], **extra: Any) -> None:
        """Replace a service's passing instances: (id, address, port)."""
        with self._cond:
            self.index += 1
            self.indexes[service] = self.index
            self.services[service] = [
                {
                    "Node": {"Node": "node1", "Address": "127.0.0.1"},
                    "Service": {
                        "ID": i,
                        "Service": service,
                        "Address": a,
                        "Port": p,
                        "Tags": extra.get("tags"),
                        "Meta": extra.get("meta", {}),
                        "Weights": {"Passing": extra.get("weight", 1), "Warning": 1},
                    },
                    "Checks": [],
                }
                for i, a, p in instances
            ]
            self._cond.notify_all()

    def reset_index(self, value: int) -> None:
        with self._cond:
            self.index = value
            for k in self.indexes:
                self.indexes[k] = value
            self._cond.notify_all()

    def handle(self, req: _Handler) -> None:
        parts = urlsplit(req.path)
        self.requests.append(req.path)
        if self.fail:
            req._send(500, b"down")
            return
        name = parts.path.rsplit("/", 1)[-1]
        query = parse_qs(parts.query)
        index = int(query.get("index", ["0"])[0])
        wait = float(query.get("wait", ["5s"])[0].rstrip("s"))
        with self._cond:
            deadline = time.monotonic() + min(wait, 5.0)
            while index and self.indexes.get(name, 1) == index and not self.fail:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            entries = self.services.get(name, [])
            if "tag" in query:
                tag = query["tag"][0]
                entries = [e for e in entries if tag in (e["Service"]["Tags"] or [])]
            body = json.dumps(entries).encode()
            current = self.indexes.get(name, 1)
        req._send(200, body, {"X-Consul-Index": str(current)})

    def close(self) -> None:
        with self._cond:
            self.fail = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


class Backend:
    """A service instance answering `{"instance": name}`; can fail or be slow."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        self.bodies: list[bytes] = []
        self.server, self.thread = _start(self, host)
        self.host = host
        self.port = self.server.server_address[1]

    def handle(self, req: _Handler) -> None:
        self.hits += 1
        length = int(req.headers.get("Content-Length") or 0)
        self.bodies.append(req.rfile.read(length) if length else b"")
        if self.delay:
            time.sleep(self.delay)
        body = json.dumps(
            {"instance": self.name, "path": req.path, "host": req.headers.get("Host")}
        ).encode()
        req._send(self.status, body)

    @property
    def instance(self) -> tuple[str, str, int]:
        return (self.name, self.host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
