"""Kubernetes -> registry: event-driven writes, and a full reconcile every 30 s.

Three reflectors (Services, EndpointSlices, Nodes) feed one `ToRegistry`.
Every event marks the Service it touches dirty and wakes the writer, which
computes that Service's instances (`registrations.py`), compares them with
what it last wrote, and sends only the differences to the agent, at once: no
polling, no debounce, so a readiness change reaches the registry (HTTP and
DNS) within milliseconds of the watch event (consul-k8s polls every 30 s).

The full reconcile reads what the agent really holds on node `k8s-sync` and
makes it equal to what Kubernetes says: missing or different instances are
written, instances Kubernetes no longer has are removed. It runs first once
every reflector has listed (so nothing is removed before the first full sync:
an empty cache must not empty the registry), then every `resync` seconds, and
it is what cleans up after a sync that was killed mid-stream: IDs are
deterministic, so a restarted sync updates its own instances and removes only
what is stale, never duplicates.

Writes go out concurrently (one writer per agent connection, 16). One that
fails leaves its Service dirty and is retried after a pause; one the agent
refuses as invalid (4xx) is logged with the Service's name and not retried
until the Service changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._exceptions import AgentWriteError
from .._kube.reflector import key_of
from .._kube.slices import service_of
from .agent import AgentClient
from .registrations import Registration, registrations

log = logging.getLogger("waypost.kubernetes")

Obj = dict[str, Any]
RESYNC = 30.0
RETRY_PAUSE = 1.0


class ToRegistry:
    """Keeps the agent's `k8s-sync` node equal to what Kubernetes says.

    Args:
        agent: The agent's API.
        namespaces: Only these namespaces (None: all).
        resync: Seconds between full reconciles.
    """

    def __init__(
        self, agent: AgentClient, namespaces: set[str] | None = None, resync: float = RESYNC
    ) -> None:
        self.agent = agent
        self.namespaces = namespaces
        self.resync = resync
        self.services: dict[str, Obj] = {}
        self.slices: dict[str, dict[str, Obj]] = {}
        self.nodes: dict[str, Obj] = {}
        self.written: dict[str, dict[str, Registration]] = {}
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.reconciles = 0
        self.first_sync_at: float | None = None
        self.services_handler = _Handler(self._on_service)
        self.slices_handler = _Handler(self._on_slice)
        self.nodes_handler = _Handler(self._on_node)

    # -- what the reflectors tell us ----------------------------------------

    def _on_service(self, kind: str, obj: Obj, old: Obj | None) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = obj
        self._mark(key)

    def _on_slice(self, kind: str, obj: Obj, old: Obj | None) -> None:
        ns = (obj.get("metadata") or {}).get("namespace", "")
        name = (obj.get("metadata") or {}).get("name", "")
        for svc in {service_of(obj), service_of(old) if old else ""} - {""}:
            key = f"{ns}/{svc}"
            held = self.slices.setdefault(key, {})
            if kind == "DELETED" or service_of(obj) != svc:
                held.pop(name, None)
            else:
                held[name] = obj
            self._mark(key)

    def _on_node(self, kind: str, obj: Obj, old: Obj | None) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        if kind == "DELETED":
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = obj
        for key, svc in self.services.items():  # node addresses matter to NodePort only
            if (svc.get("spec") or {}).get("type") == "NodePort":
                self._mark(key)

    def _mark(self, key: str) -> None:
        if self.namespaces is None or key.partition("/")[0] in self.namespaces:
            self.dirty.add(key)
            self.wake.set()

    def desired(self, key: str) -> dict[str, Registration]:
        """The instances Service `key` stands for. A Service that cannot be read
        (a malformed object) keeps what was written for it, with a warning."""
        svc = self.services.get(key)
        if svc is None:
            return {}
        try:
            found = registrations(svc, self.slices.get(key, {}).values(), self.nodes)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "Service %s cannot be synced as it is (%r); keeping its instances", key, exc
            )
            return dict(self.written.get(key, {}))
        return {r.service_id: r for r in found}

    # -- the writer -----------------------------------------------------------

    async def run(self, ready: Callable[[], Awaitable[None]]) -> None:
        """Write until cancelled; `ready` returns once every reflector has listed."""
        await ready()
        await self._reconcile_until_done()
        next_full = time.monotonic() + self.resync
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.0, next_full - time.monotonic()))
            self.wake.clear()
            if time.monotonic() >= next_full:
                await self._reconcile_until_done()
                next_full = time.monotonic() + self.resync
                continue
            keys, self.dirty = self.dirty, set()
            if not await self._apply(keys):
                await asyncio.sleep(RETRY_PAUSE)

    async def _reconcile_until_done(self) -> None:
        while not await self.reconcile():
            await asyncio.sleep(RETRY_PAUSE)

    async def reconcile(self) -> bool:
        """Make the agent hold exactly what Kubernetes says; False if a write failed."""
        try:
            actual = await self.agent.held()
        except AgentWriteError as exc:
            log.warning("cannot read the registry for a full sync: %s", exc)
            return False
        self.dirty.clear()
        wanted = {key: self.desired(key) for key in self._keys()}
        everything = {sid: reg for regs in wanted.values() for sid, reg in regs.items()}
        puts = [reg for sid, reg in everything.items() if actual.get(sid) != reg]
        removals = [sid for sid in actual if sid not in everything]
        ok = await self._write(puts, removals)
        self.written = wanted
        self.reconciles += 1
        if self.first_sync_at is None:
            self.first_sync_at = time.monotonic()
        log.info(
            "full sync: %d instances, %d written, %d removed",
            len(everything),
            len(puts),
            len(removals),
        )
        return ok

    def _keys(self) -> set[str]:
        keys = set(self.services) | set(self.slices)
        return {
            k for k in keys if self.namespaces is None or k.partition("/")[0] in self.namespaces
        }

    async def _apply(self, keys: set[str]) -> bool:
        """Write the differences of the dirty Services; False if something failed."""
        puts: list[Registration] = []
        removals: list[str] = []
        sent: dict[str, dict[str, Registration]] = {}
        for key in keys:
            wanted, before = self.desired(key), self.written.get(key, {})
            sent[key] = wanted
            puts += [r for sid, r in wanted.items() if before.get(sid) != r]
            removals += [sid for sid in before if sid not in wanted]
        ok = await self._write(puts, removals)
        # What was sent, not what is desired now: an event that arrived while the
        # writes were in flight marked its Service dirty, and the next pass must
        # find a difference to write (reading `desired` here lost such a flip
        # until the next full reconcile, 30 s later).
        self.written.update(sent)
        if not ok:
            for key in keys:
                self.written.pop(key, None)  # unknown: compare with nothing next time
                self.dirty.add(key)
        return ok

    async def _write(self, puts: list[Registration], removals: list[str]) -> bool:
        """Send the writes on the agent client's lanes, one writer per lane."""
        work: list[Registration | str] = [*puts, *removals]
        failed = False

        async def writer(lane: int) -> None:
            nonlocal failed
            while work:
                item = work.pop()
                try:
                    if isinstance(item, Registration):
                        await self.agent.register(item, lane)
                    else:
                        await self.agent.deregister(item, lane)
                except AgentWriteError as exc:
                    what = (
                        f"registering {item.name} {item.address}:{item.port}"
                        if isinstance(item, Registration)
                        else f"removing {item}"
                    )
                    if 400 <= exc.code < 500:
                        log.error("the agent refused %s: %s", what, exc)
                    else:
                        failed = True
                        log.warning("%s failed: %s", what, exc)

        await asyncio.gather(*(writer(lane) for lane in range(min(self.agent.lanes, len(work)))))
        return not failed


class _Handler:
    """Adapts one reflector's events to a ToRegistry method."""

    def __init__(self, on_event: Callable[[str, Obj, Obj | None], None]) -> None:
        self._on_event = on_event

    def on_event(self, kind: str, obj: Obj, old: Obj | None) -> None:
        self._on_event(kind, obj, old)

    def on_synced(self) -> None:
        return None
