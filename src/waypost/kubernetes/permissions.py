"""Every Kubernetes API call the sync makes, as RBAC rules (least privilege).

deploy/kubernetes/k8s-sync.yaml grants exactly these, and the tests check
both sides: the manifest against this table, and every request a running sync
sends to the fake API server against it.
"""

from __future__ import annotations

# (API group, resource, verbs, why)
PERMISSIONS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("", "services", ("list", "watch"), "Kubernetes -> registry: the Services to sync"),
    ("discovery.k8s.io", "endpointslices", ("list", "watch"), "their endpoints and readiness"),
    ("", "nodes", ("list", "watch"), "NodePort Services register their nodes' addresses"),
    ("coordination.k8s.io", "leases", ("get", "create", "update"), "leader election"),
    ("", "services", ("create", "update", "delete"), "--to-k8s only: ExternalName Services"),
)
