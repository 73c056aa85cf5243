"""The catalog: the state store, its watches and its storage, behind one object.

Every write is a plan (writes.py) run by `write()`: validated against the
state, committed with conditions on what it read, re-run on a conflict; the
backend applies the batch to the state once durable. Reads go straight to
`catalog.state`. `block()` is the one
blocking-query loop every read shares (HTTP long-polls, the UI, DNS caches).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Concatenate, ParamSpec, TypeVar

from .._exceptions import Conflict, StorageError
from ..storage import Entry, Storage
from . import codec, writes
from .model import Check, Node, Service
from .state import Change, State
from .txn import Txn
from .watch import Topic, Watches

ChangeListener = Callable[[set[Topic], list[Entry]], None]
RecordListener = Callable[[int, list[Change]], None]
log = logging.getLogger("waypost.catalog")
P = ParamSpec("P")
T = TypeVar("T")
MAX_ATTEMPTS = 20  # a plan re-run this often is starved by a hot key; say so rather than spin


class Catalog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.state = State()
        self.watches = Watches()
        self._listeners: list[ChangeListener] = []
        self._record_listeners: list[RecordListener] = []
        self._opened = False
        self.parked = 0  # blocking queries waiting right now
        self.conflicts = 0  # plans re-run because a concurrent write changed what they read

    async def open(self) -> None:
        await self.storage.open(self._apply)
        self.state.base_index = max(1, self.state.index)
        self._opened = True

    async def close(self) -> None:
        await self.storage.close()

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener(topics, entries)` after every applied change (DNS cache,
        the health runner following its node's checks)."""
        self._listeners.append(listener)

    def subscribe_records(self, listener: RecordListener) -> None:
        """Call `listener(index, changes)` after every change applied once the
        catalog is open (not the replay at start-up): each record of the batch
        as it was and as it is (state.Change). The health timeline uses it."""
        self._record_listeners.append(listener)

    def _apply(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
        if not self._opened:  # the replay at start-up: maybe in chunks, never reported
            self._notify(self.state.apply(index, entries, snapshot, replay=True), entries)
            return
        if not self._record_listeners:
            self._notify(self.state.apply(index, entries, snapshot), entries)
            return
        changes: list[Change] = []
        topics = self.state.apply(index, entries, snapshot, changes)
        for listener in self._record_listeners:  # before the wake-up: readers see them
            try:
                listener(index, changes)
            except Exception:  # a history is an extra: it must never stop the catalog
                log.exception("a record listener failed on the change at index %d", index)
        self._notify(topics, entries)

    def _notify(self, topics: set[Topic], entries: list[Entry]) -> None:
        self.watches.notify(topics)
        for listener in self._listeners:
            listener(topics, entries)

    # -- blocking queries --------------------------------------------------

    async def block(
        self,
        topics: Iterable[Topic],
        min_index: int,
        wait: float,
        abandon: asyncio.Future[None] | None = None,
    ) -> None:
        """Return once the index over `topics` passes `min_index`, after `wait`
        seconds, or as soon as `abandon` resolves (the client went away).

        An index above any this catalog can have reported comes from another
        history (the agent restarted on an older store, or the store was
        restored): the answer is at once, with the lower index, so the client
        resets (as Consul's docs tell clients to) instead of waiting out its
        `wait` on data it will never see move."""
        if min_index <= 0 or min_index > self.state.highest_index():
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

    async def write(
        self, plan: Callable[Concatenate[Txn, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run `plan(txn, ...)` on the current state and commit what it staged,
        on condition that nothing it read has changed meanwhile; on a Conflict,
        run it again on the newer state. This is the one write path (txn.py).

        Raises:
            ValidationError, NotFoundError, ConfigError: the plan refused.
            StorageError: the store failed, or the conflicts did not stop.
        """
        # write_at's loop, not a call to it: every registration comes through
        # here, and one coroutine less in the chain is one frame less to make
        # and to pass the commit's wake-up through.
        for _ in range(MAX_ATTEMPTS):
            txn = Txn(self.state)
            result = plan(txn, *args, **kw)
            if not txn.ops and not self._confirms(txn):
                return result
            try:
                await self.storage.commit(list(txn.ops.values()), list(txn.conditions.values()))
                return result
            except Conflict:
                self.conflicts += 1
        raise self._kept_conflicting()

    async def write_at(
        self, plan: Callable[Concatenate[Txn, P], T], *args: P.args, **kw: P.kwargs
    ) -> tuple[T, int]:
        """`write()`, returning the plan's result and the commit's index (0: nothing written)."""
        for _ in range(MAX_ATTEMPTS):
            txn = Txn(self.state)
            result = plan(txn, *args, **kw)
            if not txn.ops and not self._confirms(txn):
                return result, 0
            try:
                ops, conditions = list(txn.ops.values()), list(txn.conditions.values())
                index = await self.storage.commit(ops, conditions)
                return result, index if ops else 0
            except Conflict:
                self.conflicts += 1
        raise self._kept_conflicting()

    def _confirms(self, txn: Txn) -> bool:
        """Whether a plan that staged nothing must have the store check its
        conditions anyway (a commit of no entries: nothing is applied, no
        topic's index moves, nobody wakes). So when a put was dropped as
        unchanged (txn.py) on a shared store: this agent's copy may not have
        another agent's change yet, and a write judged on it must not be lost
        (a set after another agent's set, a cas or acquire that would now
        fail); a Conflict runs the plan again on the newer state. A store only
        this agent opens holds nothing its copy lacks: nothing to confirm."""
        # No conditions left: a /v1/txn that failed dropped them with its ops
        # (kvtxn.run); there is nothing to confirm, and no reason to commit.
        return txn.unchanged and bool(txn.conditions) and self.storage.shared

    @staticmethod
    def _kept_conflicting() -> StorageError:
        return StorageError(
            f"the write kept conflicting with concurrent writes ({MAX_ATTEMPTS} attempts); "
            "nothing was written: try again"
        )

    async def commit(self, entries: list[Entry]) -> int:
        """Write raw entries without conditions: for tests and benchmarks that seed data."""
        return await self.storage.commit(entries)

    async def put(self, *records: Node | Service | Check) -> int:
        """Store records as they are, unvalidated: for tests and benchmarks."""
        return await self.commit([codec.put(r) for r in records])

    async def register_service(
        self,
        service: Service,
        checks: list[Check],
        replace_checks: bool = False,
        status_given: Collection[str] = (),
    ) -> int:
        """Store an instance with its checks (writes.put_instance); returns the index."""
        plan = writes.put_instance
        return (await self.write_at(plan, service, checks, replace_checks, set(status_given)))[1]

    async def deregister_service(self, node: str, service_id: str) -> int:
        """Remove an instance and its checks. Raises NotFoundError if unknown."""
        return (await self.write_at(writes.deregister, node, service_id))[1]

    async def deregister_check(self, node: str, check_id: str) -> int:
        return (await self.write_at(writes.deregister_check, node, check_id))[1]

    async def deregister_node(self, node: str) -> int:
        """Remove a node with all its instances and checks."""
        return (await self.write_at(writes.deregister_node, node))[1]

    async def update_check(self, node: str, check_id: str, status: str, output: str) -> bool:
        """Record a check result. A status change is committed; an output-only
        change stays in memory (see State.set_output) until `store_output()`.
        True if anything changed.

        Raises:
            NotFoundError: the check does not exist (it may have just been removed).
        """
        if await self.write(writes.set_status, node, check_id, status, output):
            return True
        return self.state.set_output(node, check_id, output)

    async def store_output(self, node: str, check_id: str) -> None:
        """Commit the output a check shows now (kept in memory by `update_check`).

        Raises:
            NotFoundError: the check does not exist (it may have just been removed).
        """
        await self.write(writes.store_output, node, check_id)

    # -- results that could not be stored ---------------------------------

    def hold(self, node: str, check_id: str, output: str) -> None:
        """Show a check critical here until `release()` (State.hold): its result
        could not be stored. Wakes blocking queries and drops DNS answers."""
        self._notify(self.state.hold(node, check_id, output), [])

    def release(self, node: str, check_id: str) -> None:
        """Show the stored record again; a no-op (no listener called) if not held."""
        topics = self.state.release(node, check_id)
        if topics:
            self._notify(topics, [])

    def statistics(self) -> dict[str, float]:
        return {
            **self.state.statistics(),
            "write_conflicts": self.conflicts,
            "held_checks": len(self.state.held),
            **self.watches.statistics(),
            "parked_queries": self.parked,
        }
