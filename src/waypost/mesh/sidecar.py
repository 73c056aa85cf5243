"""What a sidecar's Envoy gets: the resources for one `connect-proxy` instance.

- `public_listener`: on the sidecar's address and port; TLS with this
  service's leaf (over SDS), client certificates required and checked
  against the CA's roots; RBAC from the intentions (rbac.py), with an
  access log of every refusal and, for http, a 403 that names the
  intention; then the local app (cluster `local_app`). With
  `protocol = "http"` it is an HTTP connection manager whose route (over
  RDS) carries the RBAC rules, so a changed intention applies to the next
  request on open connections too.
- one outbound listener per upstream on `LocalBindAddress:LocalBindPort`,
  plain TCP or HTTP (routes with retries and timeouts), to cluster
  `upstream:<name>`: EDS over the upstream's healthy sidecars, TLS that
  presents the leaf and accepts only the upstream's SPIFFE ID; with http,
  least-request balancing, circuit breakers, a retry budget and outlier
  detection.
- secrets: `leaf:<service>` and `roots`.
"""

from __future__ import annotations

from ..catalog import proxyconfig
from ..catalog.model import Service, Upstream
from ..catalog.proxyconfig import ProxyConfig
from ..catalog.state import State
from . import rbac
from . import resources as r
from .ca import spiffe_id

LOCAL_APP = "local_app"


class Context:
    """What the translation needs besides the state: identity, the datacenter,
    and the intentions' default (the ACL default policy)."""

    def __init__(self, trust_domain: str, datacenter: str, default_allow: bool = True) -> None:
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self.default_allow = default_allow


def snapshot(state: State, proxy: Service, ctx: Context) -> r.Snapshot:
    """Every resource of the sidecar `proxy` (a connect-proxy instance)."""
    assert proxy.proxy is not None
    snap = r.empty_snapshot()
    dest = proxy.proxy.destination_service_name
    inbound = proxyconfig.parse(proxy.proxy.config)
    _add(snap, _local_app(proxy, inbound))
    _add(snap, _public_listener(state, proxy, inbound, ctx))
    if inbound.http:
        _add(snap, _public_routes(state, dest, inbound, ctx))
    for upstream in proxy.proxy.upstreams:
        config = proxyconfig.parse(proxy.proxy.config, upstream.config)
        for resource in _upstream(state, dest, upstream, config, ctx):
            _add(snap, resource)
    return snap


def _add(snap: r.Snapshot, resource: r.JSON) -> None:
    type_url = resource["@type"]
    name = resource.get("name") or resource["clusterName"]
    snap[type_url][name] = resource


def _local_app(proxy: Service, config: ProxyConfig) -> r.JSON:
    assert proxy.proxy is not None
    host, port = proxy.proxy.local_service_address, proxy.proxy.local_service_port
    return {
        "@type": r.CLUSTER,
        "name": LOCAL_APP,
        "type": "STATIC",
        "connectTimeout": r.ms(config.local_connect_timeout_ms),
        "loadAssignment": r.inline(r.load_assignment(LOCAL_APP, [(host, port)])),
    }


def _public_listener(state: State, proxy: Service, config: ProxyConfig, ctx: Context) -> r.JSON:
    assert proxy.proxy is not None
    dest = proxy.proxy.destination_service_name
    host, port = r.endpoint_of(state, proxy)
    listener: r.JSON = {
        "@type": r.LISTENER,
        "name": f"public_listener:{host}:{port}",
        "address": r.address(host, port),
    }
    if config.http:
        manager = r.http_manager(
            "public_listener", r.rds(_public_route_name(dest)), [rbac.http_filter()]
        )
        manager["typedConfig"]["localReplyConfig"] = rbac.denial_reply(dest)
        manager["typedConfig"]["accessLog"] = rbac.refusal_log(dest, http=True)
        filters = [manager]
    else:
        authz = rbac.network_filter(state, dest, ctx.default_allow)
        filters = [authz, r.tcp_proxy("public_listener", LOCAL_APP)]
        listener["accessLog"] = rbac.refusal_log(dest, http=False)  # written as the connection ends
    listener["filterChains"] = [{"filters": filters, "transportSocket": _server_tls(dest)}]
    return listener


def _public_route_name(dest: str) -> str:
    return f"public:{dest}"


def _public_routes(state: State, dest: str, config: ProxyConfig, ctx: Context) -> r.JSON:
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": LOCAL_APP, "timeout": r.ms(config.local_request_timeout_ms)},
        "typedPerFilterConfig": rbac.per_route(state, dest, ctx.default_allow),
    }
    return {
        "@type": r.ROUTE,
        "name": _public_route_name(dest),
        "virtualHosts": [{"name": dest, "domains": ["*"], "routes": [route]}],
    }


def _server_tls(service: str) -> r.JSON:
    return {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "@type": r.TLS_DOWN,
            "requireClientCertificate": True,
            "commonTlsContext": {
                "tlsCertificateSdsSecretConfigs": [r.sds(r.leaf_secret_name(service))],
                "validationContextSdsSecretConfig": r.sds(r.ROOTS_SECRET),
            },
        },
    }


def _client_tls(service: str, upstream: str, ctx: Context) -> r.JSON:
    peer = spiffe_id(ctx.trust_domain, ctx.datacenter, upstream)
    return {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "@type": r.TLS_UP,
            "sni": upstream,
            "commonTlsContext": {
                "tlsCertificateSdsSecretConfigs": [r.sds(r.leaf_secret_name(service))],
                "combinedValidationContext": {
                    "defaultValidationContext": {
                        "matchTypedSubjectAltNames": [
                            {"sanType": "URI", "matcher": {"exact": peer}}
                        ]
                    },
                    "validationContextSdsSecretConfig": r.sds(r.ROOTS_SECRET),
                },
            },
        },
    }


def upstream_cluster_name(upstream: str) -> str:
    return f"upstream:{upstream}"


def _upstream(
    state: State, service: str, up: Upstream, config: ProxyConfig, ctx: Context
) -> list[r.JSON]:
    name = upstream_cluster_name(up.destination_name)
    cluster = r.eds_cluster(name, config.connect_timeout_ms)
    cluster["transportSocket"] = _client_tls(service, up.destination_name, ctx)
    endpoints = [
        r.endpoint_of(state, s)
        for s in state.proxies_for(up.destination_name)
        if r.healthy(state, s)
    ]
    stat = f"upstream.{up.destination_name}"
    if config.http:
        r.resilience(cluster, config)
        routes = {
            "virtualHosts": [
                {"name": name, "domains": ["*"], "routes": r.retry_routes(name, config)}
            ]
        }
        chain = [r.http_manager(stat, {"routeConfig": {"name": name, **routes}})]
    else:
        chain = [r.tcp_proxy(stat, name)]
    listener = {
        "@type": r.LISTENER,
        "name": f"{name}:{up.local_bind_address}:{up.local_bind_port}",
        "address": r.address(up.local_bind_address, up.local_bind_port),
        "filterChains": [{"filters": chain}],
    }
    return [cluster, r.load_assignment(name, endpoints), listener]
