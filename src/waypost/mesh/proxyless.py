"""Proxyless gRPC: resources in the form gRPC's own xDS client accepts.

A grpcio channel to `xds:///payment` asks for the Listener named `payment`
(an API listener: an HTTP connection manager with an inline route and the
router filter), then for cluster `grpc:payment` (EDS, round robin) and its
endpoints: the healthy instances, in one weighted locality (gRPC drops
localities without a weight). No sidecar, no TLS: the channel talks to the
instances directly, balanced by gRPC itself.

Intentions apply as far as a plaintext client allows: a client gets only
the services the intentions (or, with none, the default policy) let its
declared service (`waypost.service` in its bootstrap) call; one that
declares none is judged by the wildcard intentions and the default. That
is the control plane withholding addresses, not enforcement at the server:
a client that knows an address can still dial it. With ACLs on, the xDS
token must hold `service:write` on the declared service (server.py), so a
client cannot claim another's identity.
"""

from __future__ import annotations

from ..catalog import connect
from ..catalog.state import State
from . import resources as r


def cluster_name(service: str) -> str:
    return f"grpc:{service}"


def snapshot(state: State, datacenter: str, source: str, default_allow: bool) -> r.Snapshot:
    """A listener, a cluster and endpoints for every plain service `source`
    may call; the client asks only for the names it dials (server.py sends
    only those)."""
    snap = r.empty_snapshot()
    for name in sorted(state.service_names()):
        instances = [s for s in state.instances(name) if not s.kind]
        if not instances or not connect.decide(state, source, name, default_allow).allowed:
            continue
        cluster = cluster_name(name)
        snap[r.LISTENER][name] = _listener(name, cluster)
        snap[r.CLUSTER][cluster] = {**r.eds_cluster(cluster, 5000), "lbPolicy": "ROUND_ROBIN"}
        endpoints = [r.endpoint_of(state, s) for s in instances if r.healthy(state, s)]
        snap[r.ENDPOINT][cluster] = r.load_assignment(cluster, endpoints, datacenter, weighted=True)
    return snap


def _listener(name: str, cluster: str) -> r.JSON:
    route = {"match": {"prefix": ""}, "route": {"cluster": cluster}}
    manager = {
        "@type": r.HCM,
        "statPrefix": name,
        "routeConfig": {
            "name": name,
            "virtualHosts": [{"name": name, "domains": ["*"], "routes": [route]}],
        },
        "httpFilters": [r.router_filter()],
    }
    return {"@type": r.LISTENER, "name": name, "apiListener": {"apiListener": manager}}
