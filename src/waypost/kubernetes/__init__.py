"""`waypost k8s-sync`: Kubernetes Services into the registry, and registry services back.

A process of its own beside the agent: it talks to Kubernetes through the
shared `_kube` package and to the agent only over its HTTP API (a third-party
writer, like consul-k8s's sync-catalog), so it imports none of the agent's
packages. See docs/kubernetes.md.

    registrations.py  Service + EndpointSlices + Nodes -> registry instances (pure)
    agent.py          the agent's /v1/catalog API
    to_registry.py    Kubernetes -> registry: event-driven writes, full reconcile
    to_k8s.py         registry -> Kubernetes: ExternalName Services, debounced
    lease.py          leader election on a coordination.k8s.io/v1 Lease
    sync.py           all of it together; `run_sync()` for the CLI
"""
