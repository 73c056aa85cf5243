"""List and watch one collection exactly as client-go's reflector does.

    list (paginated: limit + continue)  ->  keep metadata.resourceVersion
    watch from it (allowWatchBookmarks, timeoutSeconds random in [min, 2*min))
      each event moves the version (BOOKMARKs included; never wait for one)
      stream ends normally (timeout)     -> watch again from the last version
      410 (HTTP status or ERROR event)   -> list again; what the store held and
                                            the new list lacks was deleted in
                                            the gap: report it as DELETED
      429, 5xx, connection refused       -> back off, watch again from the last version
      other errors (403, 404, ERROR)     -> back off, list again
      a watch closed within 1 s with no event counts as a failure (back off)
    backoff: 0.8 s doubling to 30 s with jitter, reset after 2 min without failure

A continue token that expired mid-list (410) restarts the list without a
limit, as client-go's pager does. The store is keyed `namespace/name`; the
handler sees every change as (type, new object, old object) on the event loop,
in order, and `on_synced()` after each list: it must not block.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._exceptions import KubernetesError, ResourceGone
from .api import ApiClient, Obj, status_error

log = logging.getLogger("waypost.kubernetes")

MIN_WATCH_TIMEOUT = 300.0  # client-go's minWatchTimeout: 5 minutes, doubled at random
PAGE_SIZE = 500  # client-go's pager default


class Handler(Protocol):
    def on_event(self, kind: str, obj: Obj, old: Obj | None) -> None:
        """`ADDED`, `MODIFIED` or `DELETED` (old is the previous version, if held)."""
        ...

    def on_synced(self) -> None:
        """A list has been applied: the store is complete as of its version."""
        ...


def key_of(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def version_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Store:
    """The objects of one collection, keyed `namespace/name`."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}

    def replace(self, items: Iterable[Obj]) -> list[tuple[str, Obj, Obj | None]]:
        """Take a fresh list; the changes it implies, deletions included."""
        fresh = {key_of(o): o for o in items}
        changes: list[tuple[str, Obj, Obj | None]] = []
        for key, held in self.objects.items():
            if key not in fresh:
                changes.append(("DELETED", held, held))
        for key, obj in fresh.items():
            old = self.objects.get(key)
            if old is None:
                changes.append(("ADDED", obj, None))
            elif version_of(old) != version_of(obj):
                changes.append(("MODIFIED", obj, old))
        self.objects = fresh
        return changes

    def apply(self, kind: str, obj: Obj) -> Obj | None:
        """Apply one watch event; the previous version, if any."""
        key = key_of(obj)
        if kind == "DELETED":
            return self.objects.pop(key, None)
        old = self.objects.get(key)
        self.objects[key] = obj
        return old


class Backoff:
    """client-go's reflector backoff: 0.8 s doubling to 30 s, jitter 1.0, reset after 2 min."""

    def __init__(
        self,
        rng: random.Random,
        initial: float = 0.8,
        cap: float = 30.0,
        reset_after: float = 120.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rng, self.initial, self.cap, self.reset_after = rng, initial, cap, reset_after
        self._now = now
        self._delay = 0.0
        self._last = float("-inf")

    def next(self, at_least: float | None = None) -> float:
        now = self._now()
        if now - self._last > self.reset_after:
            self._delay = 0.0
        self._delay = min(self.cap, self._delay * 2 if self._delay else self.initial)
        self._last = now
        delay = self._delay * (1 + self.rng.random())  # jitter factor 1.0
        return max(delay, at_least or 0.0)


@dataclass
class ReflectorStats:
    lists: int = 0
    pages: int = 0
    watches: int = 0
    relists_gone: int = 0
    failures: int = 0
    events: int = 0
    bookmarks: int = 0
    resource_version: str = ""
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_TRANSIENT = {429}  # and every 5xx, and "no answer" (code 0)


def transient(exc: KubernetesError) -> bool:
    """Worth watching again from the same version after a pause (no relist)."""
    return exc.code == 0 or exc.code in _TRANSIENT or exc.code >= 500


class Reflector:
    """Keeps a `Store` of one collection current and tells a handler of each change.

    Args:
        client: The API client.
        path: The collection, e.g. `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices`.
        handler: Told of every change, in order.
        label_selector: Only objects matching it.
        page_size: `limit` of each list page.
        min_watch_timeout: Watches ask for a random timeout in [this, 2 * this) seconds.
        rng: Random source (jitter, watch timeouts).
        backoff: The failure backoff (default: client-go's).
    """

    def __init__(
        self,
        client: ApiClient,
        path: str,
        handler: Handler,
        *,
        label_selector: str | None = None,
        page_size: int = PAGE_SIZE,
        min_watch_timeout: float = MIN_WATCH_TIMEOUT,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.handler = handler
        self.label_selector = label_selector
        self.page_size = page_size
        self.min_watch_timeout = min_watch_timeout
        self.rng = rng or random.Random()
        self.backoff = backoff or Backoff(self.rng)
        self.store = Store()
        self.stats = ReflectorStats()
        self.synced = asyncio.Event()
        self.failing = asyncio.Event()  # set while not healthy after a failure: wakes readers
        self.recovered = asyncio.Event()  # set while healthy: wakes readers waiting out an outage

    async def run(self) -> None:
        """List and watch until cancelled; never returns otherwise."""
        while True:
            try:
                version = await self.list_all()
                await self._watch_from(version)
            except ResourceGone as exc:
                self.stats.relists_gone += 1
                log.info("%s: %s; listing again", self.path, exc)
            except KubernetesError as exc:
                await self._failed(exc)

    async def list_all(self) -> str:
        """List the whole collection, apply it to the store; its resourceVersion."""
        items, version = await self._list_pages()
        self.stats.lists += 1
        for kind, obj, old in self.store.replace(items):
            self.handler.on_event(kind, obj, old)
        self.stats.resource_version = version
        self._healthy()
        self.synced.set()
        self.handler.on_synced()
        return version

    async def _list_pages(self) -> tuple[list[Obj], str]:
        items: list[Obj] = []
        params = self._selector({"limit": str(self.page_size)})
        while True:
            try:
                page = await self.client.list_page(self.path, params)
            except ResourceGone:
                if "continue" not in params:
                    raise
                log.info("%s: continue token expired; listing again without a limit", self.path)
                page = await self.client.list_page(self.path, self._selector({}))
                items = []
            self.stats.pages += 1
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")
            params = self._selector({"limit": str(self.page_size), "continue": str(token)})

    async def _watch_from(self, version: str) -> None:
        """Watch (reopening as needed) until an error that needs a relist."""
        while True:
            started, before = time.monotonic(), self.stats.events + self.stats.bookmarks
            try:
                version = await self._watch_once(version)
            except KubernetesError as exc:
                if isinstance(exc, ResourceGone) or not transient(exc):
                    raise
                await self._failed(exc)
                continue
            quiet = self.stats.events + self.stats.bookmarks == before
            if quiet and time.monotonic() - started < 1.0:
                await self._failed(KubernetesError(f"watch of {self.path} closed at once"))

    async def _watch_once(self, version: str) -> str:
        timeout = self.min_watch_timeout * (1 + self.rng.random())
        params = self._selector(
            {
                "watch": "true",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(int(timeout)),
            }
        )
        self.stats.watches += 1
        async with self.client.watch(self.path, params, read_timeout=timeout + 30) as events:
            self._healthy()
            async for event in events:
                version = self._handle(event, version)
        return version

    def _handle(self, event: Obj, version: str) -> str:
        kind, obj = str(event.get("type", "")), event["object"]
        if kind == "ERROR":
            raise status_error(obj, f"watch {self.path}")
        version = version_of(obj) or version
        self.stats.resource_version = version
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            return version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("%s: ignoring watch event of unknown type %r", self.path, kind)
            return version
        self.stats.events += 1
        old = self.store.apply(kind, obj)
        self.handler.on_event(kind, obj, old)
        return version

    @property
    def healthy(self) -> bool:
        """The last list or watch open succeeded, with no failure since."""
        return self.recovered.is_set()

    def _healthy(self) -> None:
        self.failing.clear()
        self.recovered.set()

    async def _failed(self, exc: KubernetesError) -> None:
        self.failing.set()
        self.recovered.clear()
        self.stats.failures += 1
        self.stats.last_error = str(exc)
        delay = self.backoff.next(exc.retry_after)
        log.warning("%s: %s; retrying in %.1fs", self.path, exc, delay)
        await asyncio.sleep(delay)

    def _selector(self, params: dict[str, str]) -> dict[str, str]:
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params
