"""Envoy resources as proto3 JSON, and the pieces every proxy kind shares.

Resources are built as plain dicts in Envoy's canonical JSON form (what its
docs and `config_dump` show), each with its `@type`, and turned into
protobuf messages only when they are sent (server.py). The dicts hash
cheaply for versioning, read like Envoy's documentation, and a wrong field
fails loudly in `json_format.ParseDict` in the tests rather than in Envoy.
"""

from __future__ import annotations

from typing import Any, Final

from ..catalog.model import Service
from ..catalog.proxyconfig import ProxyConfig
from ..catalog.state import State

JSON = dict[str, Any]

LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# The order pushes go out in: clusters before their endpoints, listeners
# before their routes (Envoy's "make before break" for ADS).
PUSH_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

HCM: Final = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
TCP_PROXY: Final = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER: Final = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TLS_DOWN: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
TLS_UP: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS: Final = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

ROOTS_SECRET: Final = "roots"
ADS: Final[JSON] = {"ads": {}, "resourceApiVersion": "V3"}

Snapshot = dict[str, dict[str, JSON]]  # type URL -> resource name -> resource


def empty_snapshot() -> Snapshot:
    return {type_url: {} for type_url in PUSH_ORDER}


def ms(value: int) -> str:
    """A proto3 JSON Duration from milliseconds."""
    return f"{value / 1000:.3f}s"


def seconds(value: float) -> str:
    return f"{value:.3f}s"


def address(host: str, port: int) -> JSON:
    return {"socketAddress": {"address": host, "portValue": port}}


def leaf_secret_name(service: str) -> str:
    return f"leaf:{service}"


def sds(name: str) -> JSON:
    return {"name": name, "sdsConfig": ADS}


def router_filter() -> JSON:
    return {"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}


def eds_cluster(name: str, connect_timeout_ms: int) -> JSON:
    return {
        "@type": CLUSTER,
        "name": name,
        "type": "EDS",
        "edsClusterConfig": {"edsConfig": ADS, "serviceName": name},
        "connectTimeout": ms(connect_timeout_ms),
    }


def resilience(cluster: JSON, config: ProxyConfig) -> JSON:
    """What `protocol = "http"` adds to an upstream cluster: balancing,
    circuit breakers with a retry budget, and outlier detection."""
    limits, phc = config.limits, config.passive_health_check
    cluster["lbPolicy"] = config.lb_policy.upper()
    cluster["circuitBreakers"] = {
        "thresholds": [
            {
                "maxConnections": limits.max_connections,
                "maxPendingRequests": limits.max_pending_requests,
                "maxRequests": limits.max_concurrent_requests,
                "maxRetries": limits.max_retries,
                "retryBudget": {
                    "budgetPercent": {"value": config.retry_budget_percent},
                    "minRetryConcurrency": config.retry_budget_min_concurrency,
                },
            }
        ]
    }
    cluster["outlierDetection"] = {
        "consecutive5xx": phc.max_failures,
        "enforcingConsecutive5xx": phc.enforcing_consecutive_5xx,
        "interval": seconds(phc.interval),
        "baseEjectionTime": seconds(phc.base_ejection_time),
        "maxEjectionTime": seconds(phc.max_ejection_time),
        "maxEjectionPercent": phc.max_ejection_percent,
    }
    return cluster


def retry_routes(cluster: str, config: ProxyConfig) -> list[JSON]:
    """Two routes: idempotent methods retry on `retry_on`; the others only
    when the request never reached an instance (connect failure, refused
    stream), so a POST is never sent twice."""
    base: JSON = {"cluster": cluster, "timeout": ms(config.request_timeout_ms)}
    policy: JSON = {
        "numRetries": config.num_retries,
        "retryHostPredicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3"
                    ".PreviousHostsPredicate"
                },
            }
        ],
        # A retry re-picks until previous_hosts accepts a host, then takes the
        # last one picked. least_request with two hosts and no load picks the
        # dead one half the time: after 5 re-picks that is 1 in 64 per retry
        # (a kill -9 under load failed 1 request of 1,679 that way in CI);
        # 16 makes it 1 in ~130,000, each re-pick costing nanoseconds.
        "hostSelectionRetryMaxAttempts": "16",
    }
    if config.per_try_timeout_ms:
        policy["perTryTimeout"] = ms(config.per_try_timeout_ms)
    idempotent = {
        "name": ":method",
        "stringMatch": {"safeRegex": {"regex": "^(GET|HEAD|OPTIONS|PUT|DELETE|TRACE)$"}},
    }
    return [
        {
            "match": {"prefix": "/", "headers": [idempotent]},
            "route": {**base, "retryPolicy": {**policy, "retryOn": config.retry_on}},
        },
        {
            "match": {"prefix": "/"},
            "route": {
                **base,
                "retryPolicy": {**policy, "retryOn": "connect-failure,refused-stream"},
            },
        },
    ]


def http_manager(stat_prefix: str, route: JSON, filters: list[JSON] | None = None) -> JSON:
    """An HTTP connection manager filter; `route` is `{"rds": ...}` or `{"routeConfig": ...}`."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typedConfig": {
            "@type": HCM,
            "statPrefix": stat_prefix,
            "httpFilters": [*(filters or []), router_filter()],
            **route,
        },
    }


def rds(name: str) -> JSON:
    return {"rds": {"routeConfigName": name, "configSource": ADS}}


def tcp_proxy(stat_prefix: str, cluster: str) -> JSON:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typedConfig": {"@type": TCP_PROXY, "statPrefix": stat_prefix, "cluster": cluster},
    }


def endpoint_of(state: State, service: Service) -> tuple[str, int]:
    """Where an instance is reached: its own address, else its node's."""
    node = state.node(service.node)
    return service.address or (node.address if node else "") or "127.0.0.1", service.port


def load_assignment(
    name: str, endpoints: list[tuple[str, int]], locality: str = "", weighted: bool = False
) -> JSON:
    """A ClusterLoadAssignment of healthy endpoints (critical instances are
    left out rather than marked, so Envoy's panic mode cannot revive them)."""
    group: JSON = {
        "lbEndpoints": [
            {"endpoint": {"address": address(host, port)}, "healthStatus": "HEALTHY"}
            for host, port in endpoints
        ]
    }
    if locality:
        group["locality"] = {"region": locality}
    if weighted:
        group["loadBalancingWeight"] = 1  # gRPC's xDS client drops unweighted localities
    return {"@type": ENDPOINT, "clusterName": name, "endpoints": [group] if endpoints else []}


def inline(assignment: JSON) -> JSON:
    """A load assignment inside a static cluster: the same, without its `@type`."""
    return {k: v for k, v in assignment.items() if k != "@type"}


def healthy(state: State, service: Service) -> bool:
    """Passing or warning: what Consul's health answers count as available."""
    return state.aggregate_status(service) in ("passing", "warning")
