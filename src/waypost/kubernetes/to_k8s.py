"""Registry -> Kubernetes (`--to-k8s`): an ExternalName Service per registry service.

Each registry service not from Kubernetes (its instances carry no `k8s` tag:
those are the ones this sync wrote) gets a Service in `--k8s-namespace`:

    kind: Service, spec: {type: ExternalName, externalName: <name>.service.<domain>}
    labels: {app.kubernetes.io/managed-by: waypost-k8s-sync}

so pods resolve `<name>` (cluster DNS CNAMEs it to the registry's DNS, which
cluster DNS must forward `<domain>` to). Names that are not valid Service names
(DNS-1035 labels) are lowercased, other characters turned into `-`, cut to
63 characters; a name that still does not fit is skipped with a warning.

Rules: a Service the sync did not create (no such label) is never touched,
whatever its name (logged once); one it created is updated when it differs
and deleted when the registry service is gone. Registry changes are debounced
(1 s of quiet, at most 5 s after the first change) so a deploy that registers
fifty instances makes one pass, not fifty. Changes on the Kubernetes side (a
Service of ours deleted or edited by hand) are repaired at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from .._exceptions import AgentWriteError, KubernetesError
from .._kube import CORE, collection
from .._kube.api import ApiClient
from .._kube.reflector import Reflector
from .agent import AgentClient
from .registrations import MANAGED_BY, MANAGED_BY_LABEL, TAG

log = logging.getLogger("waypost.kubernetes")

Obj = dict[str, Any]
QUIET, MAX_DELAY = 1.0, 5.0
SKIP = {"consul"}  # the registry's own service
_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def service_name(name: str) -> str | None:
    """A registry name as a Kubernetes Service name (DNS-1035 label), or None."""
    candidate = re.sub(r"[^a-z0-9-]", "-", name.lower())[:63].strip("-")
    return candidate if _LABEL.match(candidate) else None


def external_service(name: str, target: str, namespace: str, domain: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {"waypost.io/registry-service": target},
        },
        "spec": {"type": "ExternalName", "externalName": f"{target}.service.{domain}"},
    }


def ours(obj: Obj) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


class ToKubernetes:
    """Keeps one ExternalName Service per registry service in a namespace.

    Args:
        agent: The agent's API.
        client: The Kubernetes API.
        namespace: Where the Services go.
        domain: The registry's DNS domain (`consul`).
    """

    def __init__(
        self, agent: AgentClient, client: ApiClient, namespace: str, domain: str = "consul"
    ) -> None:
        self.agent = agent
        self.client = client
        self.namespace = namespace
        self.domain = domain.strip(".")
        self.path = collection(CORE, "services", namespace)
        self.reflector = Reflector(client, self.path, self)
        self.wanted: dict[str, str] | None = None  # k8s name -> registry name
        self.kube_changed = asyncio.Event()
        self.passes = 0
        self._warned: set[str] = set()

    def on_event(self, kind: str, obj: Obj, old: Obj | None) -> None:
        if ours(obj) or (old is not None and ours(old)) or kind == "ADDED":
            self.kube_changed.set()

    def on_synced(self) -> None:
        self.kube_changed.set()

    async def run(self) -> None:
        """Until cancelled: wait for a change on either side, then make one pass."""
        watcher = asyncio.create_task(self._watch_registry())
        try:
            await self.reflector.synced.wait()
            while True:
                await self.kube_changed.wait()
                self.kube_changed.clear()
                if self.wanted is not None:
                    await self.apply(self.wanted)
        finally:
            watcher.cancel()

    async def _watch_registry(self) -> None:
        index = 0
        while True:
            try:
                index, names = await self._debounced(index)
            except AgentWriteError as exc:
                log.warning("registry -> Kubernetes: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self.wanted = self._desired(names)
            self.kube_changed.set()

    async def _debounced(self, index: int) -> tuple[int, dict[str, list[str]]]:
        """The next registry state, once it has been quiet for 1 s (at most 5 s after a change)."""
        index, names = await self.agent.services(index, wait=300.0 if index else 0.0)
        if self.wanted is None:
            return index, names  # the first read: no reason to wait
        first = time.monotonic()
        while (left := min(QUIET, first + MAX_DELAY - time.monotonic())) > 0:
            newer, latest = await self.agent.services(index, wait=left)
            if newer == index:
                break
            index, names = newer, latest
        return index, names

    def _desired(self, names: dict[str, list[str]]) -> dict[str, str]:
        wanted: dict[str, str] = {}
        for name, tags in names.items():
            if name in SKIP or TAG in (tags or []):
                continue
            k8s_name = service_name(name)
            if k8s_name is None:
                self._warn(name, f"registry service {name!r} has no valid Kubernetes Service name")
                continue
            wanted[k8s_name] = name
        return wanted

    async def apply(self, wanted: dict[str, str]) -> None:
        """One pass: create, update, delete so the namespace matches `wanted`."""
        self.passes += 1
        held = {key.partition("/")[2]: obj for key, obj in self.reflector.store.objects.items()}
        for k8s_name, target in sorted(wanted.items()):
            body = external_service(k8s_name, target, self.namespace, self.domain)
            current = held.get(k8s_name)
            if current is not None and not ours(current):
                self._warn(
                    k8s_name,
                    f"not overwriting Service {self.namespace}/{k8s_name}: "
                    "it was not made by waypost k8s-sync",
                )
                continue
            await self._upsert(body, current)
        for k8s_name, obj in held.items():
            if ours(obj) and k8s_name not in wanted:
                await self._call("DELETE", f"{self.path}/{k8s_name}", None)

    async def _upsert(self, body: Obj, current: Obj | None) -> None:
        if current is None:
            await self._call("POST", self.path, body)
            return
        if (current.get("spec") or {}).get("externalName") == body["spec"]["externalName"] and (
            current.get("spec") or {}
        ).get("type") == "ExternalName":
            return
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        body["spec"] = {**(current.get("spec") or {}), **body["spec"]}
        body["spec"].pop("clusterIP", None)
        body["spec"].pop("clusterIPs", None)
        await self._call("PUT", f"{self.path}/{body['metadata']['name']}", body)

    async def _call(self, method: str, path: str, body: Obj | None) -> None:
        """One write; its result goes into the store at once, so a pass that runs
        before the watch reports it does not write it again."""
        try:
            answer = await self.client.request(method, path, body=body)
        except KubernetesError as exc:
            if exc.code in (404, 409):  # raced with someone: the next event repairs it
                self.kube_changed.set()
            log.warning("registry -> Kubernetes: %s", exc)
            return
        name = (body or {}).get("metadata", {}).get("name") or path.rsplit("/", 1)[-1]
        key = f"{self.namespace}/{name}"
        if method == "DELETE":
            self.reflector.store.objects.pop(key, None)
        elif answer.get("kind") == "Service":
            self.reflector.store.objects[key] = answer

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
