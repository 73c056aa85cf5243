"""Kubernetes objects -> the registry instances they stand for (pure functions).

What consul-k8s's catalog sync registers, with its gaps closed:

- every instance on the synthetic node `k8s-sync`, tagged `k8s`, Meta
  `external-source=kubernetes`, `external-k8s-ns=<ns>` (plus the pod's node and
  zone), with a check `Kubernetes Readiness Check` that follows the endpoint:
  ready -> passing, serving-and-terminating -> warning (draining: `?passing`
  leaves it out, DNS with `dns_only_passing` too), otherwise critical;
- ClusterIP Services register their pod IPs on the endpoint port, **headless
  ones too** (consul-k8s#1252); NodePort Services the address of each node
  running an endpoint (ExternalIP, else InternalIP) on the node port;
  LoadBalancer Services each ingress IP or hostname on the Service port;
  `spec.externalIPs`, when set, stand for the Service whatever its type;
- annotations as consul-k8s reads them: `consul.hashicorp.com/service-sync`
  (true/false; default true), `.../service-name`, `.../service-tags` (comma
  separated), `.../service-meta-<key>`, `.../service-port` (a number, or a
  port name);
- ExternalName Services, and the Services the registry -> Kubernetes direction
  made, are never synced back (no loop).

Instance IDs are `<name>-<12 hex of sha1(ns/service/address:port)>`: stable
across restarts, so a restarted sync finds and updates its own instances.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._kube.slices import DRAINING, READY, endpoints_of

log = logging.getLogger("waypost.kubernetes")

NODE = "k8s-sync"
TAG = "k8s"
ANNOTATION = "consul.hashicorp.com/"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "waypost-k8s-sync"
CHECK_NAME = "Kubernetes Readiness Check"
STATUS = {READY: "passing", DRAINING: "warning"}
OUTPUT = {
    "passing": "Kubernetes health checks passing",
    "warning": "Pod terminating: serving its last requests (draining)",
    "critical": "Kubernetes health checks failing",
}

Obj = dict[str, Any]


@dataclass(frozen=True)
class Registration:
    """One registry instance as the sync writes it (and reads it back to compare)."""

    service_id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: tuple[tuple[str, str], ...]
    status: str
    output: str

    @property
    def check_id(self) -> str:
        return f"{dict(self.meta).get('external-k8s-ns', '')}/{self.service_id}"

    def body(self) -> Obj:
        """The `/v1/catalog/register` body."""
        return {
            "Node": NODE,
            "Address": "127.0.0.1",
            "NodeMeta": {"external-source": "kubernetes"},
            "SkipNodeUpdate": True,
            "Service": {
                "ID": self.service_id,
                "Service": self.name,
                "Tags": list(self.tags),
                "Address": self.address,
                "Port": self.port,
                "Meta": dict(self.meta),
            },
            "Check": {
                "CheckID": self.check_id,
                "Name": CHECK_NAME,
                "Status": self.status,
                "Output": self.output,
                "ServiceID": self.service_id,
            },
        }


def service_id(name: str, key: str, address: str, port: int) -> str:
    digest = hashlib.sha1(f"{key}/{address}:{port}".encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def should_sync(svc: Obj) -> bool:
    """Opted in (the default), not ExternalName, not made by the sync itself."""
    meta = svc.get("metadata") or {}
    if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
        return False
    if (svc.get("spec") or {}).get("type") == "ExternalName":
        return False
    raw = (meta.get("annotations") or {}).get(ANNOTATION + "service-sync")
    if raw is None:
        return True
    value = str(raw).strip().lower()
    if value in ("true", "1", "t", "yes"):
        return True
    if value in ("false", "0", "f", "no"):
        return False
    log.warning(
        "Service %s/%s: %sservice-sync=%r is not true or false; syncing it (the default)",
        meta.get("namespace"),
        meta.get("name"),
        ANNOTATION,
        raw,
    )
    return True


def registrations(svc: Obj, slices: Iterable[Obj], nodes: Mapping[str, Obj]) -> list[Registration]:
    """The instances one Service stands for (empty when it is not synced)."""
    if not should_sync(svc):
        return []
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    annotations = meta.get("annotations") or {}
    ns, svc_name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    key = f"{ns}/{svc_name}"
    base = _Base(
        name=str(annotations.get(ANNOTATION + "service-name") or svc_name).strip(),
        key=key,
        tags=(TAG, *_tags(annotations.get(ANNOTATION + "service-tags", ""))),
        meta={
            "external-source": "kubernetes",
            "external-k8s-ns": ns,
            **{
                k.removeprefix(ANNOTATION + "service-meta-"): str(v)
                for k, v in annotations.items()
                if k.startswith(ANNOTATION + "service-meta-")
            },
        },
    )
    port_choice = annotations.get(ANNOTATION + "service-port")
    if spec.get("externalIPs"):
        port = _service_port(spec, port_choice, node_port=False)
        return [base.fixed(ip, port) for ip in spec["externalIPs"]]
    kind = spec.get("type") or "ClusterIP"
    if kind == "LoadBalancer":
        port = _service_port(spec, port_choice, node_port=False)
        ingress = (svc.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        addresses = dict.fromkeys(i.get("ip") or i.get("hostname") for i in ingress)
        return [base.fixed(a, port) for a in addresses if a]
    if kind == "NodePort":
        return _node_port(base, spec, port_choice, slices, nodes)
    return _pods(base, port_choice, slices)


@dataclass(frozen=True)
class _Base:
    name: str
    key: str
    tags: tuple[str, ...]
    meta: Mapping[str, str]

    def make(self, address: str, port: int, status: str, extra: Mapping[str, str]) -> Registration:
        meta = {**self.meta, **{k: v for k, v in extra.items() if v}}
        return Registration(
            service_id=service_id(self.name, self.key, address, port),
            name=self.name,
            address=address,
            port=port,
            tags=self.tags,
            meta=tuple(sorted(meta.items())),
            status=status,
            output=OUTPUT[status],
        )

    def fixed(self, address: str, port: int) -> Registration:
        """An address Kubernetes reports no readiness for (load balancer, external IP)."""
        return self.make(address, port, "passing", {})


def _pods(base: _Base, port_choice: str | None, slices: Iterable[Obj]) -> list[Registration]:
    """ClusterIP (headless included): each pod endpoint, on the endpoint port."""
    wanted = _port_name(port_choice)
    found = []
    for ep in endpoints_of(slices, wanted):
        port = int(port_choice) if port_choice and port_choice.isdigit() else ep.port
        extra = {
            "external-k8s-node-name": ep.node,
            "external-k8s-topology-zone": ep.zone,
            "external-k8s-pod": ep.pod,
        }
        found.append(base.make(ep.address, port, STATUS.get(ep.state, "critical"), extra))
    return found


def _node_port(
    base: _Base, spec: Obj, port_choice: str | None, slices: Iterable[Obj], nodes: Mapping[str, Obj]
) -> list[Registration]:
    """NodePort: the node of each endpoint (ExternalIP first, else InternalIP), node port."""
    port = _service_port(spec, port_choice, node_port=True)
    found: dict[str, Registration] = {}
    for ep in endpoints_of(slices, None):
        address = _node_address(nodes.get(ep.node))
        if not address or (address in found and found[address].status == "passing"):
            continue
        extra = {"external-k8s-node-name": ep.node, "external-k8s-topology-zone": ep.zone}
        found[address] = base.make(address, port, STATUS.get(ep.state, "critical"), extra)
    return list(found.values())


def _node_address(node: Obj | None) -> str:
    addresses = ((node or {}).get("status") or {}).get("addresses") or []
    for wanted in ("ExternalIP", "InternalIP"):
        for address in addresses:
            if address.get("type") == wanted and address.get("address"):
                return str(address["address"])
    return ""


def _service_port(spec: Obj, choice: str | None, node_port: bool) -> int:
    """The Service port to register: the annotated one (number or name), else the first."""
    if choice and choice.isdigit():
        return int(choice)
    ports = spec.get("ports") or []
    chosen = next(
        (p for p in ports if choice and p.get("name") == choice), ports[0] if ports else {}
    )
    if node_port and chosen.get("nodePort"):
        return int(chosen["nodePort"])
    return int(chosen.get("port") or 0)


def _port_name(choice: str | None) -> str | None:
    """The slice port to read: slices name their ports after the Service's ports."""
    if not choice or choice.isdigit():
        return None
    return choice


def _tags(raw: str) -> list[str]:
    return [t.strip() for t in str(raw).split(",") if t.strip()]


def from_agent(service: Obj, check: Obj | None) -> Registration:
    """What the agent holds for one instance, in the same shape (to compare)."""
    return Registration(
        service_id=str(service.get("ID", "")),
        name=str(service.get("Service", "")),
        address=str(service.get("Address", "")),
        port=int(service.get("Port") or 0),
        tags=tuple(service.get("Tags") or ()),
        meta=tuple(sorted((service.get("Meta") or {}).items())),
        status=str((check or {}).get("Status", "")),
        output=str((check or {}).get("Output", "")),
    )
