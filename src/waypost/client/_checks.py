"""Health check definitions for self-registration, in Consul's JSON shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Duration = str | float

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(value: Duration) -> float:
    """Seconds in a duration given as a number or a Go string ("10s", "1m30s").

    Raises:
        ValueError: The string is not a duration.
    """
    if isinstance(value, int | float):
        return float(value)
    parts = _PART.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        raise ValueError(f'invalid duration {value!r} (expected e.g. "10s", "1m30s" or 2.5)')
    return sum(float(n) * _UNITS[u] for n, u in parts)


def go_duration(value: Duration) -> str:
    """A duration as Consul expects it ("10s", "250ms")."""
    total = seconds(value)
    return f"{total:g}s" if total >= 1 else f"{total * 1000:g}ms"


def _common(deregister_after: Duration | None) -> dict[str, Any]:
    if deregister_after is None:
        return {}
    return {"DeregisterCriticalServiceAfter": go_duration(deregister_after)}


@dataclass(frozen=True)
class HttpCheck:
    """The agent GETs `http://<address>:<port><path>`; 2xx is passing.

    Args:
        path: Path of the health endpoint.
        interval: Time between checks.
        timeout: Time to wait for an answer.
        method: HTTP method (default GET).
        deregister_after: Remove the service after being critical this long.
    """

    path: str = "/health"
    interval: Duration = "10s"
    timeout: Duration | None = None
    method: str | None = None
    deregister_after: Duration | None = None

    def definition(self, address: str, port: int) -> dict[str, Any]:
        """The Consul `Check` object."""
        host = f"[{address}]" if ":" in address else address
        body: dict[str, Any] = {
            "HTTP": f"http://{host}:{port}{self.path}",
            "Interval": go_duration(self.interval),
            **_common(self.deregister_after),
        }
        if self.timeout is not None:
            body["Timeout"] = go_duration(self.timeout)
        if self.method:
            body["Method"] = self.method
        return body


@dataclass(frozen=True)
class TcpCheck:
    """The agent opens a TCP connection to `<address>:<port>`; success is passing.

    Args:
        interval: Time between checks.
        timeout: Connect timeout.
        deregister_after: Remove the service after being critical this long.
    """

    interval: Duration = "10s"
    timeout: Duration | None = None
    deregister_after: Duration | None = None

    def definition(self, address: str, port: int) -> dict[str, Any]:
        """The Consul `Check` object."""
        host = f"[{address}]" if ":" in address else address
        body: dict[str, Any] = {
            "TCP": f"{host}:{port}",
            "Interval": go_duration(self.interval),
            **_common(self.deregister_after),
        }
        if self.timeout is not None:
            body["Timeout"] = go_duration(self.timeout)
        return body


@dataclass(frozen=True)
class TtlCheck:
    """The service reports itself alive; silence longer than `ttl` is critical.

    The registration heartbeats every `ttl / 3` (`PUT /v1/agent/check/pass/<id>`).

    Args:
        ttl: How long one heartbeat keeps the check passing.
        deregister_after: Remove the service after being critical this long.
    """

    ttl: Duration = "15s"
    deregister_after: Duration | None = None

    def definition(self, address: str, port: int) -> dict[str, Any]:
        """The Consul `Check` object."""
        return {"TTL": go_duration(self.ttl), **_common(self.deregister_after)}

    @property
    def heartbeat_every(self) -> float:
        """Seconds between heartbeats."""
        return seconds(self.ttl) / 3


Check = HttpCheck | TcpCheck | TtlCheck
