"""Health check definitions for self-registration, in Consul's JSON shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import _duration
from .._exceptions import ValidationError

Duration = str | float


def seconds(value: Duration, field: str = "duration") -> float:
    """Seconds in a duration given as a number of seconds or a Go string ("1m30s").

    Raises:
        ValueError: The string is not a Go duration (the grammar of waypost._duration).
    """
    if isinstance(value, int | float):
        return float(value)
    try:
        return _duration.parse(value, field)
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc


def go_duration(value: Duration, field: str = "duration") -> str:
    """A duration as Consul expects it ("10s", "1m30s", "250ms")."""
    return _duration.format(seconds(value, field))


def _common(deregister_after: Duration | None) -> dict[str, Any]:
    if deregister_after is None:
        return {}
    return {"DeregisterCriticalServiceAfter": go_duration(deregister_after, "deregister_after")}


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
            "Interval": go_duration(self.interval, "interval"),
            **_common(self.deregister_after),
        }
        if self.timeout is not None:
            body["Timeout"] = go_duration(self.timeout, "timeout")
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
            "Interval": go_duration(self.interval, "interval"),
            **_common(self.deregister_after),
        }
        if self.timeout is not None:
            body["Timeout"] = go_duration(self.timeout, "timeout")
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
        return {"TTL": go_duration(self.ttl, "ttl"), **_common(self.deregister_after)}

    @property
    def heartbeat_every(self) -> float:
        """Seconds between heartbeats."""
        return seconds(self.ttl, "ttl") / 3


Check = HttpCheck | TcpCheck | TtlCheck
