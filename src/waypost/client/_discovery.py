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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from .._exceptions import RegistryUnavailable
from ._cache import CacheEntry, InstanceCache
from ._instance import Clock, Instance
from ._sources import Source, source_from_url

log = logging.getLogger("waypost.client")


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


class _Watcher:
    """The one refresh loop of one service."""

    def __init__(self, discovery: AsyncDiscovery, service: str) -> None:
        self.discovery = discovery
        self.service = service
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.error: RegistryUnavailable | None = None
        self.task = asyncio.create_task(self._run(), name=f"waypost-watch-{service}")

    async def _run(self) -> None:
        d = self.discovery
        backoff = _Backoff(d.min_interval or 0.05, d.max_backoff, d.rng)
        index = 0
        while True:
            started = time.monotonic()
            try:
                answer = await d.source.fetch(self.service, index=index, wait=d.wait)
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
        d = self.discovery
        if not d.source.blocking:
            return d.cache.ttl
        return max(0.0, d.min_interval - (time.monotonic() - started))

    def _succeeded(self, instances: tuple[Instance, ...], index: int) -> None:
        cache = self.discovery.cache
        old = cache.get(self.service)
        entry = cache.store(self.service, instances, index)
        self.error = None
        if old is None or old.version != entry.version or old.stale:
            self._wake()
        self.ready.set()

    def _failed(self, exc: RegistryUnavailable) -> None:
        self.error = exc
        entry = self.discovery.cache.fail(self.service, exc)
        if entry is None:
            log.warning("%s", exc)
        self.ready.set()

    def _wake(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()


class AsyncDiscovery:
    """Finds healthy instances of services (asyncio).

    Args:
        url: `http://host:port` (Consul HTTP API), `dns://host:port` or
            `static://host:port,host:port`; or a `Source`.
        ttl: Seconds an answer is fresh; the poll period of non-blocking sources.
        wait: Long-poll wait for blocking sources, seconds.
        snapshot: Path of an on-disk snapshot for starting while the registry is down.
        min_interval: Minimum seconds between two reads of one service.
        max_backoff: Cap of the retry delay while the registry is unreachable.
        first_answer_timeout: Seconds `instances()` waits for a first answer.
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
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source_from_url(url) if isinstance(url, str) else url
        self.cache = InstanceCache(ttl, clock, snapshot)
        self.wait = wait
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.first_answer_timeout = first_answer_timeout
        self.rng = rng or random.Random()
        self._watchers: dict[str, _Watcher] = {}
        self._closed = False

    async def __aenter__(self) -> AsyncDiscovery:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def instances(self, service: str) -> list[Instance]:
        """The healthy instances of a service (from cache when possible).

        Args:
            service: Service name.

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        entry = await self.entry(service)
        return list(entry.instances)

    async def entry(self, service: str) -> CacheEntry:
        """The cache entry of a service (instances, version, staleness).

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        watcher = self._watcher(service)
        if not watcher.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.ready.wait(), self.first_answer_timeout)
        entry = self.cache.get(service)
        if entry is None:
            raise watcher.error or RegistryUnavailable(
                f"no answer from the registry at {self.source.url} for service {service!r} "
                f"within {self.first_answer_timeout}s",
                service=service,
            )
        self.cache.served(service, entry)
        return entry

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the full instance list now and after every change.

        Args:
            service: Service name.
        """
        watcher = self._watcher(service)
        await watcher.ready.wait()
        seen = -1
        while True:
            changed = watcher.changed
            entry = self.cache.get(service)
            if entry is not None and entry.version != seen:
                seen = entry.version
                yield list(entry.instances)
                continue
            await changed.wait()

    def statistics(self) -> dict[str, Any]:
        """Cache state and watched services."""
        return {
            "source": self.source.url,
            "watching": sorted(self._watchers),
            **self.cache.statistics(),
        }

    async def aclose(self) -> None:
        """Stop every watcher and close the source."""
        self._closed = True
        watchers, self._watchers = list(self._watchers.values()), {}
        for watcher in watchers:
            watcher.task.cancel()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher.task
        await self.source.aclose()

    def _watcher(self, service: str) -> _Watcher:
        if self._closed:
            raise RuntimeError("this AsyncDiscovery is closed")
        watcher = self._watchers.get(service)
        if watcher is None:
            watcher = self._watchers[service] = _Watcher(self, service)
        return watcher


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

    def instances(self, service: str) -> list[Instance]:
        """The healthy instances of a service.

        Args:
            service: Service name.

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        return list(self.entry(service).instances)

    def entry(self, service: str) -> CacheEntry:
        """The (refreshed if expired) cache entry of a service.

        Raises:
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        entry = self.cache.get(service)
        if entry is None or not self.cache.fresh(entry):
            try:
                answer = self.source.fetch_sync(service)
                entry = self.cache.store(service, answer.instances, answer.index)
            except RegistryUnavailable as exc:
                entry = self.cache.fail(service, exc)
                if entry is None:
                    raise
        self.cache.served(service, entry)
        return entry

    def watch(self, service: str) -> Iterator[list[Instance]]:
        """Yield the full instance list now and after every change (blocking).

        Args:
            service: Service name.
        """
        backoff = _Backoff(0.05, self.max_backoff, random.Random())
        index, seen = 0, -1
        while True:
            try:
                answer = self.source.fetch_sync(service, index=index, wait=self.wait)
            except RegistryUnavailable as exc:
                if self.cache.fail(service, exc) is None:
                    log.warning("%s", exc)
                time.sleep(backoff.next())
                continue
            backoff.reset()
            index = next_index(index, answer.index)
            entry = self.cache.store(service, answer.instances, answer.index)
            if entry.version != seen:
                seen = entry.version
                yield list(entry.instances)
            if not self.source.blocking:
                time.sleep(self.cache.ttl)

    def close(self) -> None:
        """Close the source's connections."""
        self.source.close()
