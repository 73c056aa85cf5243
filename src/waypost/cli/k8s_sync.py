"""`waypost k8s-sync`: flags -> `SyncOptions` (the work is in waypost/kubernetes/)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..kubernetes.sync import SyncOptions


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "k8s-sync",
        help="sync Kubernetes Services into the registry (and, with --to-k8s, back)",
        description="Kubernetes -> registry: every synced Service's endpoints become instances "
        "on node k8s-sync. With --to-k8s, registry services become ExternalName Services. "
        "Replicas elect a leader on a coordination.k8s.io Lease; only the leader writes.",
    )
    cmd.add_argument(
        "--kubeconfig", metavar="PATH", help="default: in-cluster, $KUBECONFIG, ~/.kube/config"
    )
    cmd.add_argument(
        "--context", metavar="NAME", help="kubeconfig context (default: the current one)"
    )
    cmd.add_argument(
        "--agent",
        "--http-addr",
        dest="agent",
        metavar="URL",
        help="default: $CONSUL_HTTP_ADDR, else http://127.0.0.1:8500",
    )
    cmd.add_argument("--token", help="ACL token for the agent (default: $CONSUL_HTTP_TOKEN)")
    cmd.add_argument(
        "--namespaces", metavar="A,B", type=_names, help="only these namespaces (default: all)"
    )
    cmd.add_argument("--to-k8s", action="store_true", help="also registry -> Kubernetes")
    cmd.add_argument(
        "--k8s-namespace", metavar="NS", help="where --to-k8s puts Services (default: ours)"
    )
    cmd.add_argument(
        "--consul-domain", default="consul", metavar="DOMAIN", help="registry DNS domain"
    )
    cmd.add_argument(
        "--lease-namespace", metavar="NS", help="the Lease's namespace (default: ours)"
    )
    cmd.add_argument("--lease-name", default="waypost-k8s-sync", metavar="NAME")
    cmd.add_argument("--lease-duration", type=float, default=15.0, metavar="S")
    cmd.add_argument("--renew-deadline", type=float, default=10.0, metavar="S")
    cmd.add_argument("--retry-period", type=float, default=2.0, metavar="S")
    cmd.add_argument(
        "--resync", type=float, default=30.0, metavar="S", help="full reconcile period"
    )
    cmd.add_argument(
        "--identity", metavar="ID", help="leader election identity (default: $POD_NAME)"
    )
    cmd.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected namespace names separated by commas")
    return names


def options(args: argparse.Namespace) -> SyncOptions:
    from ..kubernetes.sync import SyncOptions

    return SyncOptions(
        kubeconfig=args.kubeconfig,
        context=args.context,
        agent=args.agent,
        token=args.token,
        namespaces=args.namespaces,
        to_k8s=args.to_k8s,
        k8s_namespace=args.k8s_namespace,
        consul_domain=args.consul_domain,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        resync=args.resync,
        identity=args.identity,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ..kubernetes.sync import run_sync  # the agent's start-up need not import it

    return run_sync(options(args))
