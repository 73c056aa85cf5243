"""EndpointSlices: parse them, merge every slice of a Service, remove duplicates.

A Service has several slices (label `kubernetes.io/service-name`), up to 100
endpoints each from the built-in controller, one `addressType` each (a
dual-stack Service has an IPv4 and an IPv6 slice), ports per slice. While the
controller moves endpoints between slices, one endpoint can sit in two at
once: merging keeps one per (address, port), the healthier one.

Conditions (discovery.k8s.io/v1): `ready` absent means true; `serving` absent
means "same as ready"; `terminating` absent means false. They map to:

    ready                      -> READY      (registry: passing)
    serving and terminating    -> DRAINING   (registry: warning; no new requests,
                                              in-flight ones finish)
    anything else              -> UNREADY    (registry: critical; the client
                                              source leaves it out)

A slice that does not parse is skipped with a warning naming it; the others
still count (one bad object must not hide a whole Service).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

log = logging.getLogger("waypost.kubernetes")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
READY, DRAINING, UNREADY = "ready", "draining", "unready"
_RANK = {READY: 0, DRAINING: 1, UNREADY: 2}


class _Conditions(msgspec.Struct):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class _Ref(msgspec.Struct):
    kind: str = ""
    name: str = ""
    namespace: str = ""


class _Endpoint(msgspec.Struct):
    addresses: list[str]
    conditions: _Conditions = msgspec.field(default_factory=_Conditions)
    hostname: str | None = None
    nodeName: str | None = None
    zone: str | None = None
    targetRef: _Ref | None = None


class _Port(msgspec.Struct):
    name: str | None = None
    port: int | None = None
    protocol: str | None = None
    appProtocol: str | None = None


class _Meta(msgspec.Struct):
    name: str = ""
    namespace: str = ""
    labels: dict[str, str] = {}


class _Slice(msgspec.Struct):
    addressType: str
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    endpoints: list[_Endpoint] | None = None
    ports: list[_Port] | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address of one pod, on the chosen port."""

    address: str
    port: int
    state: str
    address_type: str = "IPv4"
    pod: str = ""
    node: str = ""
    zone: str = ""
    hostname: str = ""
    port_name: str = ""


def state_of(conditions: _Conditions) -> str:
    ready = True if conditions.ready is None else conditions.ready
    serving = ready if conditions.serving is None else conditions.serving
    terminating = bool(conditions.terminating)
    if ready and not terminating:
        return READY
    if serving and terminating:
        return DRAINING
    return UNREADY


def parse_slice(obj: dict[str, object]) -> _Slice | None:
    """The slice, or None (logged) if it is malformed."""
    try:
        return msgspec.convert(obj, _Slice)
    except msgspec.ValidationError as exc:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else "?"
        log.warning("skipping malformed EndpointSlice %r: %s", name, exc)
        return None


def slice_port(ports: list[_Port] | None, port_name: str | None) -> _Port | None:
    """The port named `port_name` (or, without a name, the first) of a slice."""
    for port in ports or []:
        if port.port is None:
            continue
        if port_name is None or (port.name or "") == port_name or str(port.port) == port_name:
            return port
    return None


def endpoints_of(slices: Iterable[dict[str, object]], port_name: str | None) -> list[Endpoint]:
    """Every endpoint of a Service's slices on one port, merged and de-duplicated.

    Args:
        slices: The Service's EndpointSlice objects (raw JSON).
        port_name: The slice port to use (a name, or a number as text); None: the first.
    """
    best: dict[tuple[str, int], Endpoint] = {}
    for raw in slices:
        parsed = parse_slice(raw)
        if parsed is None or parsed.addressType not in ("IPv4", "IPv6", "FQDN"):
            continue
        port = slice_port(parsed.ports, port_name)
        if port is None or port.port is None:
            continue
        for ep in parsed.endpoints or []:
            for endpoint in _each(parsed, ep, port.port, port.name or ""):
                key = (endpoint.address, endpoint.port)
                held = best.get(key)
                if held is None or _RANK[endpoint.state] < _RANK[held.state]:
                    best[key] = endpoint
    return sorted(best.values(), key=lambda e: (e.address, e.port))


def _each(parsed: _Slice, ep: _Endpoint, port: int, port_name: str) -> Iterable[Endpoint]:
    ref = ep.targetRef
    pod = ref.name if ref is not None and ref.kind == "Pod" else ""
    state = state_of(ep.conditions)
    for address in ep.addresses[:1]:  # the API allows more, but consumers use the first
        yield Endpoint(
            address=address,
            port=port,
            state=state,
            address_type=parsed.addressType,
            pod=pod,
            node=ep.nodeName or "",
            zone=ep.zone or "",
            hostname=ep.hostname or "",
            port_name=port_name,
        )


def service_of(obj: dict[str, object]) -> str:
    """The Service a slice belongs to (its `kubernetes.io/service-name` label)."""
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return str(labels.get(SERVICE_NAME_LABEL, "")) if isinstance(labels, dict) else ""
