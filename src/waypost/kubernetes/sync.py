"""`waypost k8s-sync`: the reflectors, the leader election, and both directions together.

    Services ─┐                                   ┌─▶ ToRegistry ──▶ agent /v1/catalog/*
    Slices  ──┼─▶ reflectors (always, warm cache) ┤      (leader only)
    Nodes   ──┘                                   └─▶ ToKubernetes ◀── agent blocking query
                                                         (--to-k8s, leader only)
    Lease ◀── LeaderElector: only the holder writes

Every replica keeps its reflectors running, so a replica that takes over the
Lease starts with a full cache and its first act is a full reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass

from .._kube import CORE, SLICES, collection
from .._kube.api import ApiClient
from .._kube.config import load_config
from .._kube.reflector import Handler, Reflector
from .._kube.slices import SERVICE_NAME_LABEL
from .agent import AgentClient, agent_url
from .lease import LeaderElector
from .to_k8s import ToKubernetes
from .to_registry import RESYNC, ToRegistry

log = logging.getLogger("waypost.kubernetes")


@dataclass
class SyncOptions:
    kubeconfig: str | None = None
    context: str | None = None
    agent: str | None = None
    token: str | None = None  # default: $CONSUL_HTTP_TOKEN
    namespaces: list[str] | None = None
    to_k8s: bool = False
    k8s_namespace: str | None = None
    consul_domain: str = "consul"
    lease_namespace: str | None = None
    lease_name: str = "waypost-k8s-sync"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    resync: float = RESYNC
    identity: str | None = None


def default_identity() -> str:
    """The pod's name (POD_NAME from the downward API), else host and a random part."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class Sync:
    """Everything one `waypost k8s-sync` process runs."""

    def __init__(self, options: SyncOptions) -> None:
        self.options = options
        config = load_config(options.kubeconfig, options.context)
        self.kube = ApiClient(config)
        token = options.token or os.environ.get("CONSUL_HTTP_TOKEN")
        self.agent = AgentClient(agent_url(options.agent), token)
        namespaces = set(options.namespaces) if options.namespaces else None
        self.to_registry = ToRegistry(self.agent, namespaces, options.resync)
        scopes: list[str | None] = [*options.namespaces] if options.namespaces else [None]
        self.reflectors = self._reflectors(scopes)
        self.to_k8s = (
            ToKubernetes(
                self.agent,
                self.kube,
                options.k8s_namespace or config.namespace,
                options.consul_domain,
            )
            if options.to_k8s
            else None
        )
        self.elector = LeaderElector(
            self.kube,
            options.lease_namespace or config.namespace,
            options.lease_name,
            options.identity or default_identity(),
            lease_duration=options.lease_duration,
            renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
        )

    def _reflectors(self, namespaces: list[str | None]) -> list[Reflector]:
        found = []
        for ns in namespaces:
            found.append(
                self._reflector(collection(CORE, "services", ns), self.to_registry.services_handler)
            )
            found.append(
                self._reflector(
                    collection(SLICES, "endpointslices", ns),
                    self.to_registry.slices_handler,
                    SERVICE_NAME_LABEL,
                )
            )
        found.append(self._reflector(collection(CORE, "nodes"), self.to_registry.nodes_handler))
        return found

    def _reflector(self, path: str, handler: Handler, selector: str | None = None) -> Reflector:
        return Reflector(self.kube, path, handler, label_selector=selector)

    async def ready(self) -> None:
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors))

    async def _freeze_when_listed(self) -> None:
        """Once every reflector has listed, move what exists (modules, clients,
        the cache) out of the collector's reach: a full collection then scans
        only what came later. Without it one took 15-50 ms, a stall in the path
        of every watch event behind it; the objects are long-lived and are
        still freed by reference counting when dropped."""
        await self.ready()
        gc.collect()
        gc.freeze()

    async def lead(self) -> None:
        work = [self.to_registry.run(self.ready)]
        if self.to_k8s is not None:
            work.append(self.to_k8s.run())
        await asyncio.gather(*work)

    async def run(self) -> None:
        reflectors = list(self.reflectors)
        if self.to_k8s is not None:
            reflectors.append(self.to_k8s.reflector)
        tasks = [asyncio.create_task(r.run(), name=f"reflector {r.path}") for r in reflectors]
        tasks.append(asyncio.create_task(self._freeze_when_listed(), name="gc freeze"))
        print(
            f"waypost k8s-sync running: {self.kube.config.server} -> {self.agent.url}", flush=True
        )
        try:
            await self.elector.run(self.lead)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.kube.aclose()
            await self.agent.aclose()


def run_sync(options: SyncOptions) -> int:
    """Run until SIGTERM or SIGINT (the Lease is released on the way out)."""

    async def main() -> None:
        sync = Sync(options)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await sync.run()

    asyncio.run(main())
    return 0
