"""Server-side discovery: one Envoy in front of plain services (`waypost gateway`).

A single listener (the address `waypost gateway --listen` put in the node's
metadata) routes HTTP by `Host` (`payment`, `payment.service.consul`, with
or without a port) and by path prefix (`/payment/...`, the prefix stripped)
to the healthy instances of each service in the catalog, with the same
retries and outlier detection as a sidecar's http upstream. Anything else
gets a 404 that says what the gateway knows. Routes travel over RDS, so a
new service is routable as soon as its push lands, without a listener drain.
"""

from __future__ import annotations

from ..catalog import proxyconfig
from ..catalog.state import State
from . import resources as r

ROUTE_NAME = "gateway"
CONFIG = proxyconfig.ProxyConfig(protocol="http")


def cluster_name(service: str) -> str:
    return f"gateway:{service}"


def routed_services(state: State) -> list[str]:
    """Plain services (no sidecars, not Consul's own), by name."""
    names = []
    for name in sorted(state.service_names()):
        instances = state.instances(name)
        if name != "consul" and instances and all(not s.kind for s in instances):
            names.append(name)
    return names


def snapshot(state: State, listen: tuple[str, int], domain: str, datacenter: str) -> r.Snapshot:
    snap = r.empty_snapshot()
    services = routed_services(state)
    for name in services:
        cluster = r.resilience(r.eds_cluster(cluster_name(name), CONFIG.connect_timeout_ms), CONFIG)
        snap[r.CLUSTER][cluster["name"]] = cluster
        endpoints = [r.endpoint_of(state, s) for s in state.instances(name) if r.healthy(state, s)]
        snap[r.ENDPOINT][cluster["name"]] = r.load_assignment(cluster["name"], endpoints)
    listener: r.JSON = {
        "@type": r.LISTENER,
        "name": f"gateway:{listen[0]}:{listen[1]}",
        "address": r.address(*listen),
        "filterChains": [{"filters": [r.http_manager("gateway", r.rds(ROUTE_NAME))]}],
    }
    snap[r.LISTENER][listener["name"]] = listener
    snap[r.ROUTE][ROUTE_NAME] = _routes(services, domain.rstrip("."), datacenter)
    return snap


def _routes(services: list[str], domain: str, datacenter: str) -> r.JSON:
    hosts = []
    for name in services:
        names = [name, f"{name}.service.{domain}", f"{name}.service.{datacenter}.{domain}"]
        hosts.append(
            {
                "name": name,
                "domains": [d for n in names for d in (n, f"{n}:*")],
                "routes": r.retry_routes(cluster_name(name), CONFIG),
            }
        )
    by_path = []
    for name in services:
        for route in r.retry_routes(cluster_name(name), CONFIG):
            route = {**route, "match": {**route["match"], "prefix": f"/{name}/"}}
            route["route"] = {**route["route"], "prefixRewrite": "/"}
            by_path.append(route)
    known = ", ".join(services) or "none"
    not_found = {
        "match": {"prefix": "/"},
        "directResponse": {
            "status": 404,
            "body": {
                "inlineString": "waypost gateway: no service matches this Host or path prefix "
                f"(use Host: <service> or /<service>/...); services: {known}\n"
            },
        },
    }
    hosts.append({"name": "by-path", "domains": ["*"], "routes": [*by_path, not_found]})
    return {"@type": r.ROUTE, "name": ROUTE_NAME, "virtualHosts": hosts}
