"""The Kubernetes API code shared by the client's `k8s://` source and `waypost k8s-sync`.

A private package, free for every other package to import (like the top-level
private modules): it imports none of waypost's packages, only `_exceptions`.

    config.py     in-cluster configuration or kubeconfig; tokens re-read from their file
    execauth.py   kubeconfig exec credential plugins (client.authentication.k8s.io v1, v1beta1)
    api.py        the REST client on httpx (async and sync): errors, 401 -> token re-read
    reflector.py  client-go's list/watch loop: pagination, bookmarks, 410 relist with
                  deletion detection, backoff
    slices.py     EndpointSlice conditions, merge and de-duplication
"""

from __future__ import annotations

SLICES = "/apis/discovery.k8s.io/v1"
CORE = "/api/v1"
LEASES = "/apis/coordination.k8s.io/v1"


def collection(group: str, resource: str, namespace: str | None = None) -> str:
    """The REST path of a collection, in one namespace or (None) all of them."""
    if namespace:
        return f"{group}/namespaces/{namespace}/{resource}"
    return f"{group}/{resource}"
