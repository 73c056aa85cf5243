"""Who may open an ADS stream, with ACLs on: Consul's rule for its gRPC port.

The token travels in the stream's gRPC metadata, `x-consul-token` (what
Consul's `connect envoy -token` puts in Envoy's bootstrap); none means the
agent's default token, as on the HTTP API. What it must hold depends on
what the node is (its bootstrap's metadata, snapshot.py):

- a sidecar: `service:write` on the service it proxies (Consul's rule: a
  token that may register the service may run its proxy, and so get its
  leaf certificate, which SDS carries);
- the gateway: `service:write` on `waypost-gateway`, the gateway's service;
- a proxyless gRPC client: `service:write` on the service it declares it
  calls as (`waypost.service`), since that identity decides which services
  it is given; a client that declares none is refused.

The check runs when the stream names its node, and again (server.py) once
any ACL record has changed, so deleting a token or narrowing its policy
closes the streams it no longer allows.
"""

from __future__ import annotations

from collections.abc import Callable

from .._exceptions import AccessDenied, PermissionDenied
from ..catalog.aclrules import WRITE
from ..catalog.authz import Resolver
from .snapshot import KIND_KEY, SERVICE_KEY, Translator

GATEWAY_SERVICE = "waypost-gateway"
TOKEN_METADATA = "x-consul-token"


class StreamGuard:
    def __init__(
        self, resolver: Resolver, default_token: Callable[[], str], translator: Translator
    ) -> None:
        """`default_token` is asked each time: `PUT /v1/agent/token/default` changes it."""
        self.resolver = resolver
        self.default_token = default_token
        self.translator = translator

    def check(self, token: str, node_id: str, metadata: dict[str, object]) -> None:
        """Raises AccessDenied (PermissionDenied or AclNotFound) with Consul's wording."""
        service = self.service_of(node_id, metadata)
        secret = token or self.default_token()
        self.resolver.resolve(secret).require("service", service, WRITE)

    def generation(self) -> int:
        """Moves whenever an ACL record changes: then every stream is checked again."""
        return self.resolver.table.generation

    def service_of(self, node_id: str, metadata: dict[str, object]) -> str:
        """The service whose `service:write` the node's token needs."""
        kind = str(metadata.get(KIND_KEY, "sidecar"))
        if kind == "gateway":
            return GATEWAY_SERVICE
        if kind == "grpc":
            declared = str(metadata.get(SERVICE_KEY, ""))
            if not declared:
                raise PermissionDenied(
                    "Permission denied: with ACLs on, a proxyless gRPC client must declare the "
                    "service it calls as (waypost connect grpc-bootstrap --service NAME) and "
                    "send a token with service:write on it"
                )
            return declared
        proxy = self.translator.find_proxy(node_id)
        if proxy is None or proxy.proxy is None:
            return node_id  # not registered: the translator says so once allowed
        return proxy.proxy.destination_service_name


__all__ = ["TOKEN_METADATA", "AccessDenied", "StreamGuard"]
