"""Group commit for the etcd backend: concurrent commits share one Txn, in order.

Every commit, of any size, goes through one bounded queue. Up to
`max_inflight` Txns are in flight at once, each on a "slot" of its own (the
backend keys its idempotency nonce by slot, see etcd.py). When a slot is free
the batcher scans the queue in order and takes every commit that may go now,
up to `max_ops` operations and `max_ops` compares; a commit of `max_ops` or
more goes alone. At low load a commit goes out alone at once, so batching adds
no latency.

Order. A commit may not go while an earlier commit that it depends on is in
flight or still waiting: one writes a key that the other writes, reads (an
exact condition) or guards (a range condition). Two commits that only read
the same key do not depend on each other. So two commits that touch one key
land in etcd in the order `commit()` was called, even when an earlier one is
retried, and a commit's conditions are evaluated after every earlier write to
what they guard. A commit whose outcome is unknown keeps its keys (and its
slot) until the backend has settled its fate (`fence`), so nothing that
depends on it can overtake it.

Bounds. At most `max_queued` commits wait; one more fails at once with
StoreBusy. Each commit's deadline counts from the moment it is queued: one
still waiting at its deadline fails with StoreUnavailable, and it was never
sent. A Txn is sent with the earliest deadline of the commits it carries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from .._exceptions import OutcomeUnknown, StorageError, StoreBusy, StoreUnavailable
from .base import Condition, Entry

log = logging.getLogger("waypost.storage.etcd")

MAX_QUEUED = 10_000
MAX_SCAN = 256  # queued commits looked at per Txn, to bound the cost of ordering

_K = TypeVar("_K")
Outcome = int | BaseException
Send = Callable[[int, "list[Commit]", float], Awaitable[list[Outcome]]]
Fence = Callable[[int], Awaitable[None]]


class Commit:
    """One caller's commit as it waits in the queue and travels in a Txn."""

    __slots__ = (
        "compares",
        "conditions",
        "deadline",
        "future",
        "ops",
        "ranges",
        "reads",
        "refresh",
        "state",
        "timer",
        "writes",
    )

    def __init__(
        self,
        ops: list[Entry],
        conditions: Sequence[Condition],
        deadline: float,
        *,
        compares: int | None = None,
        refresh: Callable[[], list[Entry]] | None = None,
    ) -> None:
        self.ops = ops
        self.conditions = tuple(conditions)
        self.deadline = deadline
        #: compares this commit adds to a Txn (a range condition may need several)
        self.compares = len(self.conditions) if compares is None else compares
        #: called when the commit is taken into a Txn, to build its ops from
        #: the state at that moment (the lease re-put uses it)
        self.refresh = refresh
        self.writes = frozenset(op.key for op in ops)
        self.reads = frozenset(c.key for c in self.conditions if not c.range_end)
        self.ranges = tuple((c.key, c.range_end) for c in self.conditions if c.range_end)
        self.future: asyncio.Future[int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.state = "new"  # -> queued -> sent -> done


class _Footprint:
    """The keys a set of commits writes, reads and guards, to test dependence."""

    def __init__(self) -> None:
        self.writes: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.ranges: Counter[tuple[str, str]] = Counter()

    def add(self, commit: Commit) -> None:
        self.writes.update(commit.writes)
        self.reads.update(commit.reads)
        self.ranges.update(commit.ranges)

    def remove(self, commit: Commit) -> None:
        _discount(self.writes, commit.writes)
        _discount(self.reads, commit.reads)
        _discount(self.ranges, commit.ranges)

    def blocks(self, commit: Commit) -> bool:
        """True when `commit` depends on any commit of this footprint."""
        writes, reads = self.writes, self.reads
        if any(k in writes or k in reads for k in commit.writes):
            return True
        if any(k in writes for k in commit.reads):
            return True
        if self.ranges and _any_in(commit.writes, self.ranges):
            return True
        return bool(commit.ranges and writes and _any_in(writes, commit.ranges))


def _discount(counter: Counter[_K], keys: Iterable[_K]) -> None:
    for key in keys:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]


def _any_in(keys: Iterable[str], ranges: Iterable[tuple[str, str]]) -> bool:
    spans = list(ranges)
    return any(start <= key < end for key in keys for start, end in spans)


class GroupCommitter:
    def __init__(
        self,
        send: Send,
        fence: Fence,
        max_inflight: int = 4,
        max_ops: int = 100,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._send = send
        self._fence = fence
        self._max_ops = max_ops
        self.max_queued = max_queued
        self._queue: deque[Commit] = deque()
        self._waiting = 0  # commits queued and not yet settled
        self._flight = _Footprint()
        self._free_slots = list(range(max_inflight - 1, -1, -1))
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.txns = 0
        self.busy = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def submit(self, commit: Commit) -> int:
        """Queue `commit`, wait for the Txn that carries it, and return its revision.

        Raises:
            StoreBusy: `max_queued` commits are already waiting; this one was not queued.
            StoreUnavailable: the deadline passed while it waited; it was never sent.
            StorageError, Conflict, OutcomeUnknown: as the backend's send reported.
        """
        if self._closed:
            raise StorageError("the etcd store is closed")
        if self._waiting >= self.max_queued:
            self.busy += 1
            raise StoreBusy(
                f"{self._waiting} writes are already waiting for etcd (the limit is "
                f"{self.max_queued}); this one was not queued. etcd is slow or unreachable: "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        commit.future = future
        commit.state = "queued"
        self._waiting += 1
        future.add_done_callback(lambda _: self._left_queue(commit))
        commit.timer = loop.call_at(commit.deadline, self._expire, commit)
        self._queue.append(commit)
        self._kick()
        return await future

    async def close(self) -> None:
        """Fail what is queued and stop the Txns in flight."""
        self._closed = True
        while self._queue:
            _settle(self._queue.popleft(), StorageError("the etcd store was closed"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- queue ---------------------------------------------------------------

    def _left_queue(self, commit: Commit) -> None:
        """A queued commit's future is done (settled, expired or its caller cancelled)."""
        if commit.state == "queued":
            self._waiting -= 1
            commit.state = "done"
        if commit.timer is not None:
            commit.timer.cancel()

    def _expire(self, commit: Commit) -> None:
        if commit.state == "queued":
            _settle(
                commit,
                StoreUnavailable(
                    "the write waited in this agent's queue until its deadline without being "
                    "sent to etcd (etcd is slow, or an earlier write to the same keys is still "
                    "in flight); it was not made"
                ),
            )

    def _kick(self) -> None:
        while self._queue and self._free_slots and not self._closed:
            batch = self._take()
            if not batch:
                return
            slot = self._free_slots.pop()
            for commit in batch:
                self._flight.add(commit)
            task = asyncio.get_running_loop().create_task(self._flush(slot, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[Commit]:
        """The queued commits that may go together now, in queue order."""
        now = asyncio.get_running_loop().time()
        batch: list[Commit] = []
        taken = _Footprint()
        skipped = _Footprint()
        ops = compares = scanned = 0
        index = 0
        queue = self._queue
        while index < len(queue) and scanned < MAX_SCAN:
            commit = queue[index]
            if commit.state != "queued" or commit.future is None or commit.future.done():
                del queue[index]
                continue
            if commit.deadline <= now:
                self._expire(commit)
                del queue[index]
                continue
            scanned += 1
            if self._flight.blocks(commit) or skipped.blocks(commit) or taken.blocks(commit):
                skipped.add(commit)  # later commits on its keys must wait for it too
                index += 1
                continue
            if batch and (
                ops + len(commit.ops) > self._max_ops or compares + commit.compares > self._max_ops
            ):
                break  # does not fit: it goes first next time, nothing overtakes it
            del queue[index]
            commit.state = "sent"
            self._waiting -= 1
            if commit.timer is not None:
                commit.timer.cancel()
            if commit.refresh is not None:
                commit.ops = commit.refresh()
            batch.append(commit)
            taken.add(commit)
            ops += len(commit.ops)
            compares += commit.compares
            if ops >= self._max_ops or compares >= self._max_ops:
                break
        return batch

    # -- flight --------------------------------------------------------------

    async def _flush(self, slot: int, batch: list[Commit]) -> None:
        """Send one Txn on `slot` (its commits are already in the flight footprint)."""
        try:
            self.txns += 1
            try:
                outcomes = await self._send(slot, batch, min(c.deadline for c in batch))
            except StorageError as exc:
                outcomes = [exc] * len(batch)
            except Exception as exc:  # a bug: the Txn may or may not have gone out
                log.exception("etcd group commit failed unexpectedly")
                outcomes = [OutcomeUnknown(f"the write got no answer ({exc!r})")] * len(batch)
            unknown = False
            for commit, outcome in zip(batch, outcomes, strict=True):
                _settle(commit, outcome)
                unknown = unknown or isinstance(outcome, OutcomeUnknown)
            if unknown:
                # The Txn may still be applied later; keep its keys and slot
                # until the backend has made sure it either did or never will.
                await self._fence(slot)
        finally:
            for commit in batch:
                _settle(
                    commit,
                    OutcomeUnknown("the etcd store was closed while the write was in flight"),
                )
                commit.state = "done"
                self._flight.remove(commit)
            self._free_slots.append(slot)
            if not self._closed:
                asyncio.get_running_loop().call_soon(self._kick)


def _settle(commit: Commit, outcome: Outcome) -> None:
    future = commit.future
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
