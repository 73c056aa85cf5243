"""Kubernetes objects as controllers write them, for the fake API server."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def ep(
    ip: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    pod: str | None = None,
    node: str = "node-1",
    zone: str = "zone-a",
) -> Obj:
    """One endpoint; conditions left out when None (the API's defaults apply)."""
    conditions = {
        k: v
        for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
        if v is not None
    }
    endpoint: Obj = {"addresses": [ip], "conditions": conditions, "nodeName": node, "zone": zone}
    if pod is not False:
        endpoint["targetRef"] = {"kind": "Pod", "name": pod or f"pod-{ip.replace('.', '-')}"}
    return endpoint


def endpoint_slice(
    name: str,
    service: str,
    endpoints: list[Obj],
    *,
    namespace: str = "default",
    ports: list[tuple[str, int]] = (("http", 8080),),  # type: ignore[assignment]
    address_type: str = "IPv4",
) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def service(
    name: str,
    *,
    namespace: str = "default",
    ports: list[tuple[str, int]] = (("http", 80),),  # type: ignore[assignment]
    type_: str = "ClusterIP",
    headless: bool = False,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> Obj:
    body: Obj = {
        "type": type_,
        "ports": [{"name": n, "port": p, "protocol": "TCP", "targetPort": p} for n, p in ports],
        **spec,
    }
    if headless:
        body["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": annotations or {},
            "labels": labels or {},
        },
        "spec": body,
    }


def node(name: str, *, internal: str, external: str | None = None) -> Obj:
    addresses = [{"type": "InternalIP", "address": internal}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": addresses},
    }
