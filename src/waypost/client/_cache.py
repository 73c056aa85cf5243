"""The instance cache: last known answers, freshness, stale-on-error, snapshots.

Every answer a source gives is stored with the time it arrived and a version
number that moves only when the instance list really changed (so watchers and
routers wake on changes, not on every poll). When the registry cannot be
reached, the entry is marked stale and keeps being served: a registry outage
must not become an outage of every service that uses it. Each stale answer
served is logged (once per outage) and counted in
`waypost_client_stale_answers_total`.

With `snapshot=path`, every change is written to a small JSON file (atomically:
write, then rename) and read back at start, so a process that starts while the
registry is down still finds its dependencies (marked stale).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import Counter

from .._clock import MONOTONIC, Clock
from ._instance import Instance

log = logging.getLogger("waypost.client")

STALE_ANSWERS = Counter(
    "waypost_client_stale_answers_total",
    "Answers served from the cache while the registry was unreachable",
    ["service"],
)
REGISTRY_ERRORS = Counter(
    "waypost_client_registry_errors_total",
    "Failed reads from the registry",
    ["service"],
)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What is known about one service.

    Attributes:
        instances: The last known healthy instances.
        index: The registry index of that answer (0 when unknown).
        fetched_at: Clock time of the last successful read.
        version: Moves by one each time `instances` changes.
        stale: True while the registry cannot be reached.
        error: Why the last read failed, when stale.
    """

    instances: tuple[Instance, ...]
    index: int
    fetched_at: float
    version: int
    stale: bool = False
    error: str | None = None


class InstanceCache:
    """Per-service entries with TTL freshness and an optional disk snapshot.

    Args:
        ttl: Seconds an answer counts as fresh.
        clock: Time source.
        snapshot: Path of a JSON snapshot file, or None.
    """

    def __init__(
        self, ttl: float = 5.0, clock: Clock | None = None, snapshot: str | Path | None = None
    ) -> None:
        self.ttl = ttl
        self.clock = clock or MONOTONIC
        self.snapshot = Path(snapshot) if snapshot else None
        self._entries: dict[str, CacheEntry] = {}
        self.stale_served = 0
        if self.snapshot is not None:
            self._load()

    def get(self, service: str) -> CacheEntry | None:
        """The entry of a service, if any answer was ever seen."""
        return self._entries.get(service)

    def fresh(self, entry: CacheEntry) -> bool:
        """Whether an entry is recent enough to serve without asking again."""
        return not entry.stale and self.clock.now() - entry.fetched_at < self.ttl

    def store(self, service: str, instances: tuple[Instance, ...], index: int) -> CacheEntry:
        """Record a successful read; bumps the version only if instances changed."""
        old = self._entries.get(service)
        changed = old is None or set(old.instances) != set(instances)
        version = (old.version + 1 if changed else old.version) if old else 1
        if old is not None and old.stale:
            log.info("registry reachable again for service %r", service)
        entry = CacheEntry(instances, index, self.clock.now(), version)
        self._entries[service] = entry
        if changed and self.snapshot is not None:
            self._save()
        return entry

    def fail(self, service: str, error: Exception) -> CacheEntry | None:
        """Record a failed read; the old entry (if any) becomes stale."""
        REGISTRY_ERRORS.labels(service).inc()
        old = self._entries.get(service)
        if old is None:
            return None
        if not old.stale:
            log.warning(
                "registry unreachable; serving %d cached instances of service %r (%s)",
                len(old.instances),
                service,
                error,
            )
        entry = replace(old, stale=True, error=str(error))
        self._entries[service] = entry
        return entry

    def served(self, service: str, entry: CacheEntry) -> None:
        """Count one answer served (stale ones go to the metric)."""
        if entry.stale:
            self.stale_served += 1
            STALE_ANSWERS.labels(service).inc()

    def statistics(self) -> dict[str, Any]:
        """Entries and counters."""
        return {
            "services": {
                name: {"instances": len(e.instances), "stale": e.stale, "version": e.version}
                for name, e in self._entries.items()
            },
            "stale_served": self.stale_served,
        }

    def _save(self) -> None:
        assert self.snapshot is not None
        data = {
            name: [_encode(i) for i in entry.instances] for name, entry in self._entries.items()
        }
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(data))
            os.replace(tmp, self.snapshot)
        except OSError as exc:
            log.warning("cannot write discovery snapshot %s: %s", self.snapshot, exc)

    def _load(self) -> None:
        assert self.snapshot is not None
        try:
            data = msgspec.json.decode(self.snapshot.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("ignoring unreadable discovery snapshot %s: %s", self.snapshot, exc)
            return
        for name, items in data.items():
            instances = tuple(_decode(item) for item in items)
            self._entries[name] = CacheEntry(
                instances, 0, float("-inf"), 1, stale=True, error="loaded from snapshot"
            )


def _encode(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "address": instance.address,
        "port": instance.port,
        "tags": list(instance.tags),
        "meta": dict(instance.meta),
        "weight": instance.weight,
        "service": instance.service,
        "health": instance.health,
    }


def _decode(item: dict[str, Any]) -> Instance:
    return Instance(
        id=item["id"],
        address=item["address"],
        port=int(item["port"]),
        tags=tuple(item.get("tags", ())),
        meta=dict(item.get("meta", {})),
        weight=int(item.get("weight", 1)),
        service=item.get("service", ""),
        health=item.get("health", "passing"),
    )
