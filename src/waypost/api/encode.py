"""Records in Consul's JSON shapes, field for field.

Null lists and maps are sent as `[]` and `{}`, as Consul's clients expect.
"""

from __future__ import annotations

from typing import Any

from .. import _duration
from ..catalog.model import Check, CheckDefinition, Node, Proxy, Service

JSON = dict[str, Any]


def _go_duration(seconds: float) -> str:
    """Go's spelling of a duration ("1m30s"); "" when unset, as Consul shows it."""
    return _duration.format(seconds) if seconds else ""


def node(n: Node) -> JSON:
    return {
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses or {"lan": n.address, "wan": n.address},
        "Meta": n.meta,
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    }


def _tagged(s: Service) -> JSON:
    return {k: {"Address": v.address, "Port": v.port} for k, v in s.tagged_addresses.items()}


def _weights(s: Service) -> JSON:
    return {"Passing": s.weights.passing, "Warning": s.weights.warning}


def service(s: Service, datacenter: str = "") -> JSON:
    """The `Service` object of health answers and agent answers."""
    out: JSON = {
        "ID": s.id,
        "Service": s.name,
        "Tags": list(s.tags),
        "Address": s.address,
        "TaggedAddresses": _tagged(s),
        "Meta": s.meta,
        "Port": s.port,
        "Weights": _weights(s),
        "EnableTagOverride": s.enable_tag_override,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    }
    if s.kind:
        out["Kind"] = s.kind
    if s.proxy is not None:
        out["Proxy"] = proxy(s.proxy)
    if datacenter:
        out["Datacenter"] = datacenter
    return out


def agent_service(s: Service, datacenter: str) -> JSON:
    """An instance as `/v1/agent/services` shows it: Consul leaves out the
    indexes there, and TaggedAddresses and Kind when empty."""
    out: JSON = {
        "ID": s.id,
        "Service": s.name,
        "Tags": list(s.tags),
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
    }
    if s.tagged_addresses:
        out["TaggedAddresses"] = _tagged(s)
    out["Weights"] = _weights(s)
    out["EnableTagOverride"] = s.enable_tag_override
    out["Datacenter"] = datacenter
    if s.kind:
        out["Kind"] = s.kind
    if s.proxy is not None:
        out["Proxy"] = proxy(s.proxy)
    return out


def proxy(p: Proxy) -> JSON:
    """A connect-proxy's `Proxy` block, in Consul's shape."""
    return {
        "DestinationServiceName": p.destination_service_name,
        "DestinationServiceID": p.destination_service_id,
        "LocalServiceAddress": p.local_service_address,
        "LocalServicePort": p.local_service_port,
        "Mode": "",
        "Config": p.config,
        "Upstreams": [
            {
                "DestinationType": u.destination_type,
                "DestinationName": u.destination_name,
                "Datacenter": u.datacenter,
                "LocalBindAddress": u.local_bind_address,
                "LocalBindPort": u.local_bind_port,
                "Config": u.config,
            }
            for u in p.upstreams
        ],
    }


def catalog_service(n: Node | None, s: Service) -> JSON:
    """One row of `/v1/catalog/service/<name>`: node and instance, flattened."""
    return {
        "ID": n.id if n else "",
        "Node": s.node,
        "Address": n.address if n else "",
        "Datacenter": n.datacenter if n else "",
        "TaggedAddresses": (n.tagged_addresses or {"lan": n.address, "wan": n.address})
        if n
        else {},
        "NodeMeta": n.meta if n else {},
        "ServiceKind": s.kind,
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": list(s.tags),
        "ServiceAddress": s.address,
        "ServiceTaggedAddresses": _tagged(s),
        "ServiceWeights": _weights(s),
        "ServiceMeta": s.meta,
        "ServicePort": s.port,
        "ServiceEnableTagOverride": s.enable_tag_override,
        "ServiceProxy": proxy(s.proxy) if s.proxy is not None else {},
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    }


def definition(d: CheckDefinition | None) -> JSON:
    if d is None:
        return {}
    out: JSON = {
        "Interval": _go_duration(d.interval),
        "Timeout": _go_duration(d.timeout),
        "TTL": _go_duration(d.ttl),
        "DeregisterCriticalServiceAfter": _go_duration(d.deregister_critical_after),
    }
    for key, value in (("HTTP", d.http), ("TCP", d.tcp), ("GRPC", d.grpc), ("Method", d.method)):
        if value:
            out[key] = value
    if d.header:
        out["Header"] = d.header
    if d.args:
        out["ScriptArgs"] = list(d.args)
    if d.alias_service:
        out["AliasService"] = d.alias_service
    if d.tls_skip_verify:
        out["TLSSkipVerify"] = True
    return out


def check(c: Check) -> JSON:
    d = c.definition
    return {
        "Node": c.node,
        "CheckID": c.check_id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": list(c.service_tags),
        "Type": c.type,
        "Interval": _go_duration(d.interval) if d else "",
        "Timeout": _go_duration(d.timeout) if d else "",
        "ExposedPort": 0,
        "Definition": definition(d),
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }


def health_row(n: Node | None, s: Service, checks: list[Check]) -> JSON:
    return {
        "Node": node(n) if n else {"Node": s.node},
        "Service": service(s),
        "Checks": [check(c) for c in checks],
    }
