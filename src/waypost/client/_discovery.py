"""`AsyncDiscovery` and `Discovery`: find the healthy instances of a service.

Async side: the first time a service is asked for, one watcher task starts for
it and lives until the discovery is closed. For blocking sources (the agent)
the watcher long-polls: `index=<last X-Consul-Index>&wait=<wait>`; for others
it polls every `ttl`. Every `instances()` call and every `watch()` iterator of
that service reads what the watcher keeps in the cache, so there is one
long-poll per service however many callers watch it. The watcher is an asyncio
task on the caller's loop: no threads, no private event loop.

Index rules (Consul's): an index lower than the last one means the registry
was reset, so the next read starts again from 0; an index is never below 1; a
read that returns at once with an unchanged index is not a change. Calls are
spaced by at least `min_interval` (rate limit) and failures back off
exponentially with jitter up to `max_backoff`, serving the cached list
meanwhile (stale-on-error, see `_cache.py`).

Sync side: `Discovery.instances()` reads through the TTL cache with blocking
I/O in the calling thread; `Discovery.watch()` long-polls in the calling thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from .._clock import Clock
from .._exceptions import RegistryUnavailable
from ._cache import CacheEntry, InstanceCache
from ._instance import Instance
from ._sources import Source, source_from_url

log = logging.getLogger("waypost.client")


def cache_key(service: str, tag: str | None) -> str:
    """The cache key of a (service, tag) query."""
    return service if not tag else f"{service}?tag={tag}"


def next_index(previous: int, received: int) -> int:
    """The index to send next, given the last one sent and the one received."""
    if received < previous:
        return 0  # the registry went backwards: start over
    return max(1, received)


class _Backoff:
    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        self.base, self.cap, self.rng = base, cap, rng
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        delay = min(self.cap, self.base * 2.0 ** (self.failures - 1))
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class _Hub:
    """The shared state behind `AsyncDiscovery` facades: source, cache, watchers.

    `AsyncDiscovery` objects created with the same URL and options on the same
    event loop share one hub, hence one watcher (one long-poll) per service in
    the process. The hub closes when the last facade using it closes.
    """

    def __init__(self, source: Source, cache: InstanceCache, options: dict[str, Any]) -> None:
        self.source = source
        self.cache = cache
        self.wait: float = options["wait"]
        self.min_interval: float = options["min_interval"]
        self.max_backoff: float = options["max_backoff"]
        self.rng: random.Random = options["rng"] or random.Random()
        self.watchers: dict[str, _Watcher] = {}
        self.users = 0

    def watcher(self, service: str, tag: str | None = None) -> _Watcher:
        key = cache_key(service, tag)
        watcher = self.watchers.get(key)
        if watcher is None:
            watcher = self.watchers[key] = _Watcher(self, service, tag)
        return watcher

    async def close(self) -> None:
        watchers, self.watchers = list(self.watchers.values()), {}
        for watcher in watchers:
            watcher.task.cancel()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher.task
        await self.source.aclose()


_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], _Hub]] = (
    weakref.WeakKeyDictionary()
)


class _Watcher:
    """The one refresh loop of one service."""

    def __init__(self, hub: _Hub, service: str, tag: str | None = None) -> None:
        self.hub = hub
        self.service = service
        self.tag = tag
        self.key = cache_key(service, tag)
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.error: RegistryUnavailable | None = None
        self.task = asyncio.create_task(self._run(), name=f"waypost-watch-{service}")

    async def _run(self) -> None:
        hub = self.hub
        backoff = _Backoff(hub.min_interval or 0.05, hub.max_backoff, hub.rng)
        index = 0
        while True:
            started = time.monotonic()
            try:
                answer = await hub.source.fetch(
                    self.service, index=index, wait=hub.wait, tag=self.tag
                )
            except RegistryUnavailable as exc:
                self._failed(exc)
                await asyncio.sleep(backoff.next())
                continue
            except Exception as exc:  # a source bug must not end the watch silently
                log.exception("discovery source failed for service %r", self.service)
                self._failed(RegistryUnavailable(f"{exc!r}", service=self.service))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            index = next_index(index, answer.index)
            self._succeeded(answer.instances, answer.index)
            await asyncio.sleep(self._pause(started))

    def _pause(self, started: float) -> float:
        hub = self.hub
        if not hub.source.blocking:
            return hub.cache.ttl
        if getattr(hub.source, "local", False):  # the rate limit protects a registry: none here
            return 0.0
        return max(0.0, hub.min_interval - (time.monotonic() - started))

    def _succeeded(self, instances: tuple[Instance, ...], index: int) -> None:
        cache = self.hub.cache
        old = cache.get(self.key)
        entry = cache.store(self.key, instances, index)
        self.error = None
        if old is None or old.version != entry.version or old.stale:
            self._wake()
        self.ready.set()

    def _failed(self, exc: RegistryUnavailable) -> None:
        self.error = exc
        entry = self.hub.cache.fail(self.key, exc)
        if entry is None:
            log.warning("%s", exc)
        self.ready.set()

    def _wake(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()


class AsyncDiscovery:
    """Finds healthy instances of services (asyncio).

    Discoveries made with the same URL and options on one event loop share
    their watchers and cache (one long-poll per service per process), unless
    `share=False` or a `Source`, `clock` or `rng` object is passed.

    Args:
        url: `http://host:port` (Consul HTTP API), `dns://host:port` or
            `static://host:port,host:port`; or a `Source`.
        ttl: Seconds an answer is fresh; the poll period of non-blocking sources.
        wait: Long-poll wait for blocking sources, seconds.
        snapshot: Path of an on-disk snapshot for starting while the registry is down.
        min_interval: Minimum seconds between two reads of one service.
        max_backoff: Cap of the retry delay while the registry is unreachable.
        first_answer_timeout: Seconds `instances()` waits for a first answer.
        share: Share watchers with other discoveries of the same URL and options.
        clock: Time source of the cache.
        rng: Random source for jitter.
    """

    def __init__(
        self,
        url: str | Source,
        *,
        ttl: float = 5.0,
        wait: float = 60.0,
        snapshot: str | Path | None = None,
        min_interval: float = 0.05,
        max_backoff: float = 10.0,
        first_answer_timeout: float = 5.0,
        share: bool = True,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url if isinstance(url, str) else url.url
        self._source = None if isinstance(url, str) else url
        if isinstance(url, str):
            source_from_url(url)  # fail early on a bad URL
        self.first_answer_timeout = first_answer_timeout
        self._options: dict[str, Any] = {
            "ttl": ttl,
            "wait": wait,
            "snapshot": str(snapshot) if snapshot else None,
            "min_interval": min_interval,
            "max_backoff": max_backoff,
            "clock": clock,
            "rng": rng,
        }
        self._shared = share and self._source is None and clock is None and rng is None
        self._hub: _Hub | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncDiscovery:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def cache(self) -> InstanceCache:
        """The cache behind this discovery (shared with its twins)."""
        return self._get_hub().cache

    @property
    def source(self) -> Source:
        """The discovery source."""
        return self._get_hub().source

    async def instances(self, service: str, *, tag: str | None = None) -> list[Instance]:
        """The healthy instances of a service (from cache when possible).

        Args:
            service: Service name.
            tag: Keep only instances with this tag.

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        entry = await self.entry(service, tag=tag)
        return list(entry.instances)

    async def entry(self, service: str, *, tag: str | None = None) -> CacheEntry:
        """The cache entry of a service (instances, version, staleness).

        Args:
            service: Service name.
            tag: Keep only instances with this tag.

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        hub = self._get_hub()
        watcher = hub.watcher(service, tag)
        if not watcher.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.ready.wait(), self.first_answer_timeout)
        entry = hub.cache.get(watcher.key)
        if entry is None:
            raise watcher.error or RegistryUnavailable(
                f"no answer from the registry at {self.url} for service {service!r} "
                f"within {self.first_answer_timeout}s",
                service=service,
            )
        hub.cache.served(watcher.key, entry)
        return entry

    async def watch(self, service: str, *, tag: str | None = None) -> AsyncIterator[list[Instance]]:
        """Yield the full instance list now and after every change.

        Args:
            service: Service name.
            tag: Keep only instances with this tag.
        """
        hub = self._get_hub()
        watcher = hub.watcher(service, tag)
        await watcher.ready.wait()
        seen = -1
        while True:
            changed = watcher.changed
            entry = hub.cache.get(watcher.key)
            if entry is not None and entry.version != seen:
                seen = entry.version
                yield list(entry.instances)
                continue
            await changed.wait()

    def statistics(self) -> dict[str, Any]:
        """Cache state and watched services."""
        hub = self._get_hub()
        return {
            "source": self.url,
            "watching": sorted(hub.watchers),
            "shared_by": hub.users,
            **hub.cache.statistics(),
        }

    async def aclose(self) -> None:
        """Stop using the shared state; the last user stops the watchers."""
        if self._closed:
            return
        self._closed = True
        hub, self._hub = self._hub, None
        if hub is None:
            return
        hub.users -= 1
        if hub.users > 0:
            return
        hubs = _HUBS.get(asyncio.get_running_loop(), {})
        for key in [k for k, v in hubs.items() if v is hub]:
            del hubs[key]
        await hub.close()

    def _get_hub(self) -> _Hub:
        if self._closed:
            raise RuntimeError("this AsyncDiscovery is closed")
        if self._hub is None:
            self._hub = self._find_or_make_hub()
            self._hub.users += 1
        return self._hub

    def _find_or_make_hub(self) -> _Hub:
        if not self._shared:
            return self._make_hub()
        hubs = _HUBS.setdefault(asyncio.get_running_loop(), {})
        key = (self.url, *sorted((k, str(v)) for k, v in self._options.items()))
        hub = hubs.get(key)
        if hub is None:
            hub = hubs[key] = self._make_hub()
        return hub

    def _make_hub(self) -> _Hub:
        o = self._options
        source = self._source or source_from_url(self.url)
        return _Hub(source, InstanceCache(o["ttl"], o["clock"], o["snapshot"]), o)


class Discovery:
    """Finds healthy instances of services (blocking; no event loop needed).

    Args:
        url: Same as `AsyncDiscovery`.
        ttl: Seconds an answer is served from cache before asking again.
        wait: Long-poll wait of `watch()`, seconds.
        snapshot: Path of an on-disk snapshot.
        max_backoff: Cap of `watch()`'s retry delay.
        clock: Time source of the cache.
    """

    def __init__(
        self,
        url: str | Source,
        *,
        ttl: float = 5.0,
        wait: float = 60.0,
        snapshot: str | Path | None = None,
        max_backoff: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.source = source_from_url(url) if isinstance(url, str) else url
        self.cache = InstanceCache(ttl, clock, snapshot)
        self.wait = wait
        self.max_backoff = max_backoff

    def __enter__(self) -> Discovery:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def instances(self, service: str, *, tag: str | None = None) -> list[Instance]:
        """The healthy instances of a service.

        Args:
            service: Service name.
            tag: Keep only instances with this tag.

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        return list(self.entry(service, tag=tag).instances)

    def entry(self, service: str, *, tag: str | None = None) -> CacheEntry:
        """The (refreshed if expired) cache entry of a service.

        Args:
            service: Service name.
            tag: Keep only instances with this tag.

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        key = cache_key(service, tag)
        entry = self.cache.get(key)
        if entry is None or not self.cache.fresh(entry):
            try:
                answer = self.source.fetch_sync(service, tag=tag)
                entry = self.cache.store(key, answer.instances, answer.index)
            except RegistryUnavailable as exc:
                entry = self.cache.fail(key, exc)
                if entry is None:
                    raise
        self.cache.served(key, entry)
        return entry

    def watch(self, service: str, *, tag: str | None = None) -> Iterator[list[Instance]]:
        """Yield the full instance list now and after every change (blocking).

        Args:
            service: Service name.
            tag: Keep only instances with this tag.
        """
        key = cache_key(service, tag)
        backoff = _Backoff(0.05, self.max_backoff, random.Random())
        index, seen = 0, -1
        while True:
            try:
                answer = self.source.fetch_sync(service, index=index, wait=self.wait, tag=tag)
            except RegistryUnavailable as exc:
                if self.cache.fail(key, exc) is None:
                    log.warning("%s", exc)
                time.sleep(backoff.next())
                continue
            backoff.reset()
            index = next_index(index, answer.index)
            entry = self.cache.store(key, answer.instances, answer.index)
            if entry.version != seen:
                seen = entry.version
                yield list(entry.instances)
            if not self.source.blocking:
                time.sleep(self.cache.ttl)

    def close(self) -> None:
        """Close the source's connections."""
        self.source.close()
