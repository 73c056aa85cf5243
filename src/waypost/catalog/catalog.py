"""The catalog: the state store, its watches and its storage, behind one object.

Writes are validated by the caller (the API layer), turned into storage
entries here and committed as one batch; the backend applies them to the state
once durable. Reads go straight to `catalog.state`. `block()` is the one
blocking-query loop every read shares (HTTP long-polls, the UI, DNS caches).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable

import msgspec

from .._exceptions import NotFoundError
from ..storage import Entry, Storage
from . import codec
from .model import Check, Node, Service
from .state import State
from .watch import Topic, Watches

ChangeListener = Callable[[set[Topic]], None]


class Catalog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.state = State()
        self.watches = Watches()
        self._listeners: list[ChangeListener] = []
        self.parked = 0  # blocking queries waiting right now

    async def open(self) -> None:
        await self.storage.open(self._apply)
        self.state.base_index = max(1, self.state.index)

    async def close(self) -> None:
        await self.storage.close()

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener(topics)` after every applied change (DNS cache, metrics)."""
        self._listeners.append(listener)

    def _apply(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
        topics = self.state.apply(index, entries, snapshot)
        self.watches.notify(topics)
        for listener in self._listeners:
            listener(topics)

    # -- blocking queries --------------------------------------------------

    async def block(
        self,
        topics: Iterable[Topic],
        min_index: int,
        wait: float,
        abandon: asyncio.Future[None] | None = None,
    ) -> None:
        """Return once the index over `topics` passes `min_index`, after `wait`
        seconds, or as soon as `abandon` resolves (the client went away)."""
        if min_index <= 0:
            return
        topics = tuple(topics)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        self.parked += 1
        try:
            while self.state.index_of(topics) <= min_index and not self.watches.closed:
                remaining = deadline - loop.time()
                if remaining <= 0 or (abandon is not None and abandon.done()):
                    return
                await self.watches.wait(topics, remaining, abandon)
        finally:
            self.parked -= 1

    # -- writes ------------------------------------------------------------

    async def commit(self, entries: list[Entry]) -> int:
        return await self.storage.commit(entries)

    async def put(self, *records: Node | Service | Check) -> int:
        return await self.commit([codec.put(r) for r in records])

    async def register_service(
        self,
        service: Service,
        checks: list[Check],
        replace_checks: bool = False,
        status_given: Collection[str] = (),
    ) -> int:
        """Store an instance with its checks in one batch.

        Existing checks keep their status unless the body gave one (their IDs
        are in `status_given`); with `replace_checks`, the instance's checks not
        named again are removed.
        """
        entries = [codec.put(service)]
        existing = self.state.service_checks.get((service.node, service.id), {})
        for check in checks:
            old = None if check.check_id in status_given else existing.get(check.check_id)
            entries.append(codec.put(self._keep_status(check, old)))
        if replace_checks:
            named = {c.check_id for c in checks}
            entries += [
                codec.delete(codec.check_key(service.node, cid))
                for cid in existing
                if cid not in named
            ]
        return await self.commit(entries)

    @staticmethod
    def _keep_status(check: Check, old: Check | None) -> Check:
        """A re-registered check keeps its last status unless a status is given
        (Consul does the same: re-registering must not flap a healthy instance)."""
        if old is None or check.status != "critical":
            return check
        return msgspec.structs.replace(check, status=old.status, output=old.output)

    async def deregister_service(self, node: str, service_id: str) -> int:
        """Remove an instance and its checks. Raises NotFoundError if unknown."""
        if (node, service_id) not in self.state.services:
            raise NotFoundError(f'Unknown service ID "{service_id}"')
        entries = [codec.delete(codec.service_key(node, service_id))]
        for check_id in self.state.service_checks.get((node, service_id), {}):
            entries.append(codec.delete(codec.check_key(node, check_id)))
        return await self.commit(entries)

    async def deregister_check(self, node: str, check_id: str) -> int:
        if (node, check_id) not in self.state.checks:
            raise NotFoundError(f'Unknown check ID "{check_id}"')
        return await self.commit([codec.delete(codec.check_key(node, check_id))])

    async def deregister_node(self, node: str) -> int:
        """Remove a node with all its instances and checks."""
        if node not in self.state.nodes:
            raise NotFoundError(f'Unknown node "{node}"')
        entries = [codec.delete(codec.node_key(node))]
        entries += [
            codec.delete(codec.service_key(node, sid))
            for sid in self.state.node_services.get(node, {})
        ]
        entries += [
            codec.delete(codec.check_key(n, cid)) for (n, cid) in self.state.checks if n == node
        ]
        return await self.commit(entries)

    async def update_check(self, node: str, check_id: str, status: str, output: str) -> bool:
        """Record a check result. A status change is committed; an output-only
        change stays in memory (see State.set_output). True if anything changed.

        Raises:
            NotFoundError: the check does not exist (it may have just been removed).
        """
        check = self.state.checks.get((node, check_id))
        if check is None:
            raise NotFoundError(f'Unknown check ID "{check_id}"')
        if check.status == status:
            return self.state.set_output(node, check_id, output)
        await self.put(msgspec.structs.replace(check, status=status, output=output))
        return True

    def statistics(self) -> dict[str, float]:
        return {
            **self.state.statistics(),
            **self.watches.statistics(),
            "parked_queries": self.parked,
        }
