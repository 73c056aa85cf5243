"""The Kubernetes source: `k8s://?kubeconfig=PATH&context=NAME&namespace=NS&port=NAME`.

`instances("payment")` is the ready endpoints of Service `payment` in the
configured namespace (the pod's, the context's, else `default`);
`"payment.other"` reads namespace `other`. Endpoints come from every
EndpointSlice labelled `kubernetes.io/service-name=payment`, merged and
de-duplicated (`_kube/slices.py`), on the slice port named by `port=` (else
the first). Ready endpoints are `health="passing"`, serving-and-terminating
ones `health="draining"` (the router sends them nothing new), others are left
out. Each `Instance` has `meta` `pod`, `node`, `zone` (so `zone=` balancing
works) and `k8s-namespace`.

**One watch per namespace, shared by the whole process** (every source, every
`AsyncDiscovery`, every service on that event loop and API server). Per
namespace rather than per service because a process usually calls several
services of one namespace: one list and one watch stream then serve all of
them, the API server holds one watcher instead of one per service, and a
service asked for late is answered at once from the store. Slices of other
services in the namespace cost a little bandwidth; that is the trade. The
watch is `_kube/reflector.py`: client-go's reflector semantics exactly.

While the API server cannot be reached (the reflector is backing off), reads
raise `RegistryUnavailable`, so the discovery cache keeps serving the last
list marked stale; the reflector's own store is not emptied either.

Blocking: the index handed out is a per-process counter that moves whenever a
slice of that service changes, so `fetch(index=N)` returns as soon as the
watch delivers a change. The sync `fetch_sync` (no event loop, so nothing to
share a watch with) lists the service's slices and, when asked to block,
watches them from the list's resourceVersion until the first change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..._exceptions import ConfigError, KubernetesError, RegistryUnavailable
from ..._kube import SLICES, collection
from ..._kube.api import ApiClient, Obj, SyncApiClient
from ..._kube.config import KubeConfig, load_config
from ..._kube.reflector import Reflector
from ..._kube.slices import DRAINING, READY, SERVICE_NAME_LABEL, Endpoint, endpoints_of, service_of
from .._instance import Instance
from ._base import Answer

OPTIONS = ("kubeconfig", "context", "namespace", "port")
FIRST_SYNC_TIMEOUT = 5.0


def _unavailable(service: str, why: str) -> RegistryUnavailable:
    return RegistryUnavailable(
        f"Kubernetes endpoints of service {service!r} unavailable: {why}", service=service
    )


@dataclass
class _ServiceSlices:
    slices: dict[str, Obj] = field(default_factory=dict)
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class NamespaceWatch:
    """The slices of one namespace, by service, kept by one reflector."""

    def __init__(self, client: ApiClient, namespace: str, counter: itertools.count[int]) -> None:
        self.namespace = namespace
        self._counter = counter
        self.base = next(counter)
        self.services: dict[str, _ServiceSlices] = {}
        path = collection(SLICES, "endpointslices", namespace)
        self.reflector = Reflector(client, path, self, label_selector=SERVICE_NAME_LABEL)
        self.task = asyncio.create_task(self.reflector.run(), name=f"waypost-k8s-{namespace}")

    def on_event(self, kind: str, obj: Obj, old: Obj | None) -> None:
        names = {service_of(obj)} | ({service_of(old)} if old is not None else set())
        key = f"{(obj.get('metadata') or {}).get('name', '')}"
        for name in names - {""}:
            entry = self.services.setdefault(name, _ServiceSlices())
            if kind == "DELETED" or service_of(obj) != name:
                entry.slices.pop(key, None)
            else:
                entry.slices[key] = obj
            entry.version = next(self._counter)
            event, entry.changed = entry.changed, asyncio.Event()
            event.set()

    def on_synced(self) -> None:
        return None

    def version(self, service: str) -> int:
        entry = self.services.get(service)
        return entry.version if entry is not None and entry.version else self.base

    async def wait_synced(self, service: str) -> None:
        """Until the first list is in; raises at the first failure (or after 5 s)."""
        deadline = time.monotonic() + FIRST_SYNC_TIMEOUT
        reflector = self.reflector
        while not reflector.synced.is_set():
            if reflector.stats.failures or time.monotonic() > deadline:
                why = reflector.stats.last_error or f"no list within {FIRST_SYNC_TIMEOUT}s"
                raise _unavailable(service, why)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reflector.synced.wait(), 0.05)

    async def wait_change(self, service: str, index: int, wait: float) -> None:
        """Until the service's slices change past `index`, the watch fails, or `wait` s."""
        entry = self.services.setdefault(service, _ServiceSlices())
        if self.version(service) > index or not self.reflector.healthy:
            return
        waits = {
            asyncio.ensure_future(entry.changed.wait()),
            asyncio.ensure_future(self.reflector.failing.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in waits:
                pending.cancel()

    async def wait_recovered(self, wait: float) -> None:
        """Until the reflector is healthy again, or `wait` s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reflector.recovered.wait(), wait)

    def slices(self, service: str) -> list[Obj]:
        entry = self.services.get(service)
        return list(entry.slices.values()) if entry is not None else []


class _Shared:
    """One API client and one watch per namespace, per API server and event loop."""

    def __init__(self, config: KubeConfig) -> None:
        self.client = ApiClient(config)
        self.watches: dict[str, NamespaceWatch] = {}
        self.counter = itertools.count(1)
        self.users = 0

    def watch(self, namespace: str) -> NamespaceWatch:
        found = self.watches.get(namespace)
        if found is None:
            found = self.watches[namespace] = NamespaceWatch(self.client, namespace, self.counter)
        return found

    async def close(self) -> None:
        for watch in self.watches.values():
            watch.task.cancel()
        await asyncio.gather(*(w.task for w in self.watches.values()), return_exceptions=True)
        await self.client.aclose()


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Shared]] = (
    weakref.WeakKeyDictionary()
)


class K8sSource:
    """Reads ready endpoints from EndpointSlices.

    Args:
        config: The API server (default: found as `load_config` does).
        namespace: The namespace of names without a `.namespace` suffix.
        port: The slice port name (or number) to use; None: each slice's first.
    """

    blocking = True
    # Reads come from the shared watch's store: spacing them by `min_interval`
    # (0.05 s by default) only delayed a second readiness change that close.
    local = True

    def __init__(
        self,
        config: KubeConfig | None = None,
        *,
        namespace: str | None = None,
        port: str | None = None,
    ) -> None:
        self.config = config or load_config()
        self.namespace = namespace or self.config.namespace
        self.port = port
        self.url = f"k8s://{self.config.server}"
        self._shared: _Shared | None = None
        self._sync: SyncApiClient | None = None
        self._sync_state: dict[str, tuple[int, tuple[Instance, ...]]] = {}
        self._sync_counter = itertools.count(1)
        self._failing: set[str] = set()  # services whose last read raised

    @classmethod
    def from_url(cls, url: str) -> K8sSource:
        """Parse `k8s://?kubeconfig=PATH&context=NAME&namespace=NS&port=NAME`.

        Raises:
            ValueError: An option that is not one of kubeconfig, context, namespace, port.
            ConfigError: No usable Kubernetes configuration.
        """
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        unknown = sorted(set(query) - set(OPTIONS))
        if unknown:
            raise ValueError(
                f"discovery URL {url!r}: unknown option(s) {', '.join(unknown)}; "
                f"k8s:// takes {', '.join(OPTIONS)}"
            )
        config = load_config(query.get("kubeconfig"), query.get("context"))
        source = cls(config, namespace=query.get("namespace"), port=query.get("port"))
        source.url = url
        return source

    def split(self, service: str) -> tuple[str, str]:
        """`payment` -> (default namespace, payment); `payment.other` -> (other, payment)."""
        name, _, namespace = service.partition(".")
        return (namespace or self.namespace), name

    def instances_of(self, service: str, namespace: str, slices: list[Obj]) -> tuple[Instance, ...]:
        """The passing and draining instances the slices describe."""
        return tuple(
            _instance(service, namespace, ep)
            for ep in endpoints_of(slices, self.port)
            if ep.state in (READY, DRAINING)
        )

    async def fetch(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        namespace, name = self.split(service)
        watch = self._get_shared().watch(namespace)
        await watch.wait_synced(service)
        recovering = service in self._failing  # answer at once: the cache is stale
        self._failing.add(service)
        if recovering and not watch.reflector.healthy:
            # The reader knows of the outage already. Raising again at once would
            # make it back off on its own as well as the reflector, and the two
            # delays add up: wait for the reflector's own retry instead.
            await watch.wait_recovered(wait)
        if not watch.reflector.healthy:  # the cache serves what it has, marked stale
            raise _unavailable(service, watch.reflector.stats.last_error)
        if index > 0 and not recovering:
            await watch.wait_change(name, index, wait)
            if not watch.reflector.healthy:
                raise _unavailable(service, watch.reflector.stats.last_error)
        self._failing.discard(service)
        if tag:  # Kubernetes endpoints carry no tags
            return Answer(watch.version(name), ())
        return Answer(
            watch.version(name), self.instances_of(service, namespace, watch.slices(name))
        )

    def _get_shared(self) -> _Shared:
        if self._shared is None:
            table = _SHARED.setdefault(asyncio.get_running_loop(), {})
            key = self.config.identity()
            shared = table.get(key)
            if shared is None:
                shared = table[key] = _Shared(self.config)
            shared.users += 1
            self._shared = shared
        return self._shared

    def fetch_sync(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        namespace, name = self.split(service)
        deadline = time.monotonic() + wait
        while True:
            slices, version = self._list_sync(service, namespace, name)
            instances = () if tag else self.instances_of(service, namespace, slices)
            held = self._sync_state.get(service)
            if held is None or held[1] != instances:
                held = self._sync_state[service] = (next(self._sync_counter), instances)
            remaining = deadline - time.monotonic()
            if index <= 0 or held[0] > index or remaining <= 0:
                return Answer(held[0], instances)
            self._watch_sync(service, namespace, name, version, remaining)

    def _client_sync(self) -> SyncApiClient:
        if self._sync is None:
            self._sync = SyncApiClient(self.config)
        return self._sync

    def _list_sync(self, service: str, namespace: str, name: str) -> tuple[list[Obj], str]:
        path = collection(SLICES, "endpointslices", namespace)
        params = {"labelSelector": f"{SERVICE_NAME_LABEL}={name}", "limit": "500"}
        items: list[Obj] = []
        try:
            while True:
                page = self._client_sync().request("GET", path, params=params)
                items += page.get("items") or []
                meta = page.get("metadata") or {}
                if not meta.get("continue"):
                    return items, str(meta.get("resourceVersion") or "")
                params = {**params, "continue": str(meta["continue"])}
        except (KubernetesError, ConfigError) as exc:
            raise _unavailable(service, str(exc)) from exc

    def _watch_sync(self, service: str, ns: str, name: str, version: str, wait: float) -> None:
        """Block until one change of the service's slices (or `wait` seconds)."""
        path = collection(SLICES, "endpointslices", ns)
        params = {
            "labelSelector": f"{SERVICE_NAME_LABEL}={name}",
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(max(1, int(wait))),
        }
        try:
            with self._client_sync().watch(path, params, read_timeout=wait + 30) as events:
                for event in events:
                    if event.get("type") != "BOOKMARK":
                        return  # a change, or an ERROR (410 included): list again
        except KubernetesError as exc:
            if exc.code == 410:
                return
            raise _unavailable(service, str(exc)) from exc

    async def aclose(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        table = _SHARED.get(asyncio.get_running_loop(), {})
        table.pop(self.config.identity(), None)
        await shared.close()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None


def _instance(service: str, namespace: str, ep: Endpoint) -> Instance:
    meta: dict[str, Any] = {"k8s-namespace": namespace}
    for key, value in (("pod", ep.pod), ("node", ep.node), ("zone", ep.zone)):
        if value:
            meta[key] = value
    return Instance(
        id=f"{service}-{ep.address}-{ep.port}",
        address=ep.address,
        port=ep.port,
        meta=meta,
        service=service,
        health="draining" if ep.state == DRAINING else "passing",
    )
