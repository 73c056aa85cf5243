"""Which resources a connected proxy gets, by the kind its bootstrap declares.

The node's metadata says what it is (`waypost connect envoy`, `waypost
gateway` and `waypost connect grpc-bootstrap` write it): a sidecar (the
default; the node ID is the sidecar's service ID, as with Consul), the
gateway (with the address it listens on), or a proxyless gRPC client
(with the service it calls as, if its bootstrap names one).
"""

from __future__ import annotations

import logging
from typing import Any

from .._address import split_address
from .._exceptions import ConfigError, ValidationError
from ..catalog.model import Service
from ..catalog.state import State
from . import gateway, proxyless, sidecar
from . import resources as r
from .leaves import Leaves

log = logging.getLogger("waypost.mesh")

KIND_KEY = "waypost.kind"  # node metadata: "sidecar" (default), "gateway", "grpc"
LISTEN_KEY = "waypost.listen"  # node metadata of a gateway: HOST:PORT
SERVICE_KEY = "waypost.service"  # node metadata of a proxyless client: whom it calls as


class Translator:
    def __init__(
        self,
        state: State,
        leaves: Leaves,
        datacenter: str,
        domain: str,
        local_node: str,
        default_allow: bool = True,
    ) -> None:
        self.state = state
        self.leaves = leaves
        self.datacenter = datacenter
        self.domain = domain
        self.local_node = local_node
        self.default_allow = default_allow  # intentions' default: the ACL default policy

    def build(self, node_id: str, metadata: dict[str, Any]) -> r.Snapshot:
        """The resources of proxy `node_id`.

        Raises:
            ValidationError, ConfigError: the proxy's registration or metadata
                cannot be translated (the server keeps the last good snapshot).
        """
        kind = str(metadata.get(KIND_KEY, "sidecar"))
        if kind == "gateway":
            listen = split_address(str(metadata.get(LISTEN_KEY, "")), LISTEN_KEY)
            return gateway.snapshot(self.state, listen, self.domain, self.datacenter)
        if kind == "grpc":
            source = str(metadata.get(SERVICE_KEY, ""))
            return proxyless.snapshot(self.state, self.datacenter, source, self.default_allow)
        if kind != "sidecar":
            raise ConfigError(f'node {node_id}: unknown {KIND_KEY} "{kind}"')
        return self._sidecar(node_id)

    def find_proxy(self, proxy_id: str) -> Service | None:
        """The connect-proxy instance with this ID: on this agent's node
        first (where `connect envoy` runs), else on any node."""
        local = self.state.instance(self.local_node, proxy_id)
        if local is not None and local.proxy is not None:
            return local
        for service in self.state.all_instances():
            if service.id == proxy_id and service.proxy is not None:
                return service
        return None

    def _sidecar(self, node_id: str) -> r.Snapshot:
        proxy = self.find_proxy(node_id)
        if proxy is None or proxy.proxy is None:
            raise ValidationError(
                f'no connect-proxy service with ID "{node_id}" is registered: register the '
                "service with Connect.SidecarService (or a connect-proxy) first"
            )
        ctx = sidecar.Context(self.leaves.trust_domain, self.datacenter, self.default_allow)
        snap = sidecar.snapshot(self.state, proxy, ctx)
        identity = proxy.proxy.destination_service_name
        snap[r.SECRET] = self.secrets(identity)
        return snap

    def secrets(self, service: str) -> dict[str, r.JSON]:
        leaf, _ = self.leaves.leaf(service)
        roots = "".join(root.root_cert for root in self.state.roots())
        leaf_name = r.leaf_secret_name(service)
        return {
            leaf_name: {
                "@type": r.SECRET,
                "name": leaf_name,
                "tlsCertificate": {
                    "certificateChain": {"inlineString": leaf.cert_pem},
                    "privateKey": {"inlineString": leaf.private_key_pem},
                },
            },
            r.ROOTS_SECRET: {
                "@type": r.SECRET,
                "name": r.ROOTS_SECRET,
                "validationContext": {"trustedCa": {"inlineString": roots}},
            },
        }
