"""deploy/kubernetes/: valid against Kubernetes' own schemas (offline, strict), and in
agreement with the code: images, commands, ports, probe paths, RBAC."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

import waypost
from waypost.cli.main import build_parser
from waypost.kubernetes.permissions import PERMISSIONS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
DEPLOY_ETCD = ROOT / "deploy" / "kubernetes-etcd"  # the overlay, beside its base (kustomize's rule)
K8S_VERSION = kubernetes_validate.utils.latest_version()  # the newest the package bundles
MANIFESTS = sorted(
    p for d in (DEPLOY, DEPLOY_ETCD) for p in d.rglob("*.yaml") if p.name != "kustomization.yaml"
)

Obj = dict[str, Any]


def documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def everything() -> list[Obj]:
    return [d for p in MANIFESTS for d in documents(p)]


def find(kind: str, name: str) -> Obj:
    return next(d for d in everything() if d["kind"] == kind and d["metadata"]["name"] == name)


def containers(obj: Obj) -> Iterator[Obj]:
    yield from obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def test_a_current_kubernetes_version_is_used() -> None:
    assert tuple(int(x) for x in K8S_VERSION.split(".")[:2]) >= (1, 34)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY.parent)))
def test_every_manifest_is_valid_against_the_schemas(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_catches_a_mistake() -> None:
    bad = find("Deployment", "payment")
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "kustomization", [DEPLOY / "kustomization.yaml", DEPLOY_ETCD / "kustomization.yaml"], ids=str
)
def test_kustomizations_list_every_manifest_of_their_directory(kustomization: Path) -> None:
    doc = yaml.safe_load(kustomization.read_text())
    here = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
    listed = {r for r in doc["resources"] if not r.startswith("..")}
    assert listed == here
    for resource in doc["resources"]:
        assert (kustomization.parent / resource).exists(), resource


def test_every_image_is_this_release_of_waypost_or_pinned() -> None:
    for obj in everything():
        for c in containers(obj):
            assert c["image"] == f"waypost:{waypost.__version__}" or c["image"].startswith(
                "quay.io/coreos/etcd:v3."
            ), c["image"]


def parse_waypost(args: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(
        [a.replace("$(POD_NAME)", "pod").replace("$(POD_IP)", "10.1.2.3") for a in args]
    )


def waypost_containers() -> list[tuple[Obj, Obj]]:
    return [(o, c) for o in everything() for c in containers(o) if c.get("command") == ["waypost"]]


def test_waypost_commands_parse_and_their_ports_match() -> None:
    found = {parse_waypost(c["args"]).command for _, c in waypost_containers()}
    assert found == {"agent", "k8s-sync"}
    for _, c in waypost_containers():
        args = parse_waypost(c["args"])
        if args.command != "agent":
            continue
        ports = {(p["containerPort"], p["protocol"]) for p in c["ports"]}
        assert {
            (int(args.http.rsplit(":")[1]), "TCP"),
            (int(args.dns.rsplit(":")[1]), "UDP"),
        } <= ports


def test_services_point_at_named_container_ports() -> None:
    docs = everything()
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"].get("selector")
        if not selector:
            continue
        pods = [
            d
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")
            and d["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no workload"
        names = {p["name"] for pod in pods for c in containers(pod) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)


def test_k8s_sync_reaches_the_agent_service() -> None:
    [(_, sync)] = [(o, c) for o, c in waypost_containers() if c["args"][0] == "k8s-sync"]
    args = parse_waypost(sync["args"])
    url = httpx.URL(args.agent)
    name, namespace = url.host.split(".")[:2]
    agent_svc = find("Service", name)
    assert agent_svc["metadata"]["namespace"] == namespace
    assert url.port in {p["port"] for p in agent_svc["spec"]["ports"]}
    assert args.to_k8s and args.k8s_namespace == namespace


def rules_of(*names: str) -> set[tuple[str, str, str]]:
    found = set()
    for obj in everything():
        if obj["kind"] in ("Role", "ClusterRole") and obj["metadata"]["name"] in names:
            for rule in obj["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        found |= {(g, r, v) for v in rule["verbs"]}
    return found


def test_k8s_sync_rbac_is_exactly_what_the_code_needs() -> None:
    needed = {(g, r, v) for g, r, verbs, _ in PERMISSIONS for v in verbs}
    assert rules_of("waypost-k8s-sync") == needed
    binding = find("ClusterRoleBinding", "waypost-k8s-sync")
    deployment = find("Deployment", "waypost-k8s-sync")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "shop"}]
    assert find("RoleBinding", "waypost-k8s-sync")["subjects"] == binding["subjects"]
    # the Role holding leases is in the namespace the Lease goes to (the pod's own)
    assert (
        find("Role", "waypost-k8s-sync")["metadata"]["namespace"]
        == deployment["metadata"]["namespace"]
    )


def test_order_finds_payment_with_k8s_and_may_watch_slices() -> None:
    order = find("Deployment", "order")
    [c] = list(containers(order))
    url = c["command"][c["command"].index("--discovery") + 1]
    assert url.startswith("k8s://")
    port = httpx.URL(url.replace("k8s://", "http://x/")).params["port"]
    assert port in {p["name"] for p in find("Service", "payment")["spec"]["ports"]}
    assert rules_of("order-discovery") == {
        ("discovery.k8s.io", "endpointslices", v) for v in ("list", "watch")
    }
    assert order["spec"]["template"]["spec"]["serviceAccountName"] == "order"


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_payment_probe_path_is_answered_by_the_app() -> None:
    payment = load_example("payment")
    deployment = find("Deployment", "payment")
    [c] = list(containers(deployment))
    assert c["command"][:2] == ["python", "payment.py"]
    args = payment.build_parser().parse_args(c["command"][2:])
    assert args.no_register and args.port == c["ports"][0]["containerPort"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=payment.app), base_url="http://p"
    ) as http:
        for probe in ("readinessProbe", "livenessProbe"):
            assert (await http.get(c[probe]["httpGet"]["path"])).status_code == 200
    assert deployment["spec"]["replicas"] == 3
    assert find("Service", "payment-headless")["spec"]["clusterIP"] == "None"


def test_agent_probe_path_is_answered_by_a_real_agent(agent: Any) -> None:
    paths = {
        c[p]["httpGet"]["path"]
        for _, c in waypost_containers()
        for p in ("readinessProbe", "livenessProbe")
        if p in c
    }
    assert paths
    with agent.client() as http:
        for path in paths:
            assert http.get(path).status_code == 200, path
