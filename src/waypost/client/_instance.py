"""The client's view of one service instance.

`Instance` is what every discovery source produces and every balancer picks.
It is immutable and hashable; balancers key their per-instance state on `id`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Instance:
    """One healthy instance of a service.

    Attributes:
        id: Stable identifier (the registry's service ID).
        address: Host address (IP or name) to connect to.
        port: TCP port.
        tags: Registry tags.
        meta: Registry metadata (treat as read-only).
        weight: Relative weight for weighted balancing (>= 1).
        service: Name of the service this instance belongs to.
        health: `passing`, or `draining` (Kubernetes: serving but terminating):
            routers send it no new requests; those in flight finish.
    """

    id: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)
    weight: int = 1
    service: str = ""
    health: str = "passing"

    @property
    def draining(self) -> bool:
        """True while the instance finishes its requests but takes no new ones."""
        return self.health == "draining"

    @property
    def zone(self) -> str | None:
        """The locality from `meta["zone"]` or a `zone=<z>` / `zone:<z>` tag."""
        zone = self.meta.get("zone")
        if zone:
            return zone
        for tag in self.tags:
            if tag.startswith(("zone=", "zone:")):
                return tag[5:]
        return None

    @property
    def url(self) -> str:
        """The base URL `http://address:port` (IPv6 addresses bracketed)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"
