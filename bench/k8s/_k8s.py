"""Shared pieces of the Kubernetes benchmarks: the fake API server, objects, processes.

The fake API server (tests/kubernetes/fakeapi.py) stands in for kube-apiserver,
which cannot run on these machines; it speaks the real list/watch protocol over
HTTPS, so the sync and the client source run exactly as against a cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "bench" / "agent"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import _common as agent_common  # noqa: E402  (bench/agent/_common.py: processes, /proc, machine)
from tests.kubernetes.fakeapi import FakeKubeApi  # noqa: E402
from tests.kubernetes.objects import endpoint_slice, ep, service  # noqa: E402
from tests.kubernetes.syncproc import SyncProcess  # noqa: E402

__all__ = [
    "FakeKubeApi",
    "SyncProcess",
    "agent_common",
    "endpoint_slice",
    "ep",
    "populate",
    "service",
]


def address(n: int) -> str:
    """A distinct loopback-range address per endpoint (never dialled: data only)."""
    return f"127.{n // 62500 % 250}.{n // 250 % 250}.{1 + n % 250}"


def populate(api: FakeKubeApi, services: int, per_service: int, slice_size: int = 100) -> int:
    """`services` Services with `per_service` endpoints each, in slices of `slice_size`."""
    n = 0
    for s in range(services):
        name = f"svc{s}"
        api.put(service(name))
        for start in range(0, per_service, slice_size):
            eps = []
            for _ in range(min(slice_size, per_service - start)):
                n += 1
                eps.append(ep(address(n), pod=f"{name}-{n}", node=f"node-{n % 50}"))
            api.put(endpoint_slice(f"{name}-{start // slice_size}", name, eps))
    return n
