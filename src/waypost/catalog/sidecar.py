"""`Connect.SidecarService`: how a service registration expands into its sidecar.

Consul's agent turns `"Connect": {"SidecarService": {...}}` into a second
instance, `<id>-sidecar-proxy`, of Kind `connect-proxy`, filling in what the
operator left out: the name, a port from the agent's sidecar range, the
`Proxy` block pointing at the parent (its name, ID and port), the parent's
tags and meta, and two checks: TCP on the sidecar's port ("is Envoy
listening?") and an alias of the parent ("is the app behind it healthy?").
The rules live here so every writer expands a registration the same way;
`writes.register` stages the result in the same commit as the parent.
"""

from __future__ import annotations

import msgspec

from .._exceptions import ValidationError
from .definitions import (
    CheckRegistration,
    ProxyDefinition,
    ServiceRegistration,
    validate_service,
)
from .model import Service

SUFFIX = "-sidecar-proxy"
DEFAULT_PORTS = (21000, 21255)  # Consul's sidecar_min_port and sidecar_max_port
TCP_INTERVAL = "10s"  # Consul's interval for the "Connect Sidecar Listening" check


def sidecar_id(parent_id: str) -> str:
    return parent_id + SUFFIX


def expand(
    parent: ServiceRegistration,
    parent_id: str,
    port: int,
) -> ServiceRegistration:
    """The sidecar's own registration, with Consul's defaults filled in.

    Args:
        parent: the validated parent registration (it has a `SidecarService`).
        parent_id: the parent's ID (its name when no ID was given).
        port: the port to use when the sidecar names none (see `pick_port`).

    Raises:
        ValidationError: the sidecar definition is not valid.
    """
    given = parent.sidecar
    assert given is not None
    if given.kind not in ("", "connect-proxy"):
        raise ValidationError("Connect.SidecarService.Kind must be connect-proxy or left out")
    if given.connect is not None and given.connect.sidecarservice is not None:
        raise ValidationError("Connect.SidecarService cannot have a SidecarService of its own")
    proxy = msgspec.structs.replace(given.proxy or ProxyDefinition())
    proxy.destinationservicename = proxy.destinationservicename or parent.name
    proxy.destinationserviceid = proxy.destinationserviceid or parent_id
    proxy.localserviceaddress = proxy.localserviceaddress or "127.0.0.1"
    proxy.localserviceport = proxy.localserviceport or parent.port
    reg = msgspec.structs.replace(
        given,
        id=given.id or sidecar_id(parent_id),
        name=given.name or parent.name + SUFFIX,
        kind="connect-proxy",
        port=given.port or port,
        tags=given.tags or list(parent.tags),
        meta=given.meta or dict(parent.meta),
        address=given.address or parent.address,
        proxy=proxy,
        connect=None,
    )
    if not reg.all_checks():
        reg.checks = default_checks(reg, parent_id)
    validate_service(reg, "Connect.SidecarService.")
    return reg


def default_checks(reg: ServiceRegistration, parent_id: str) -> list[CheckRegistration]:
    """Consul's two sidecar checks: the proxy listens, and the app behind it is healthy."""
    return [
        CheckRegistration(
            name="Connect Sidecar Listening",
            tcp=f"{reg.address or '127.0.0.1'}:{reg.port}",
            interval=TCP_INTERVAL,
        ),
        CheckRegistration(name=f"Connect Sidecar Aliasing {parent_id}", aliasservice=parent_id),
    ]


def pick_port(
    services: dict[str, Service], own_id: str, ports: tuple[int, int] = DEFAULT_PORTS
) -> int:
    """The sidecar's port: the one it has if re-registered, else the lowest
    port of the range no other sidecar on the node uses.

    Raises:
        ValidationError: every port of the range is taken.
    """
    low, high = ports
    current = services.get(own_id)
    if current is not None and low <= current.port <= high:
        return current.port
    used = {s.port for s in services.values() if s.kind == "connect-proxy" and s.id != own_id}
    for port in range(low, high + 1):
        if port not in used:
            return port
    raise ValidationError(
        f"no free sidecar port between {low} and {high} on this node: give the sidecar a Port "
        "or widen the agent's sidecar port range"
    )
