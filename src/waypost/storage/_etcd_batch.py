"""Group commit for the etcd backend: concurrent commits share one Txn, in order.

Every commit, of any size, goes through one bounded queue. Up to
`max_inflight` Txns are in flight at once, each on a "slot" of its own (the
backend keys its idempotency nonce by slot, see _etcd_txn.py). When a Txn may
go the batcher scans the queue in order and takes every commit that may go
now, up to `max_ops` operations, `max_ops` compares and `MAX_BYTES` of keys
and values; a commit of `max_ops` or more, or larger than `MAX_BYTES`, goes
alone. At low load (no Txn out) a commit goes out alone at
once, so batching adds no latency; a commit that comes while the backend's
one Txn is out waits for its answer (or 30 ms, below) and goes with every
other commit that came meanwhile.

One sent at once; the spare slots for a stall. Each Txn costs every agent
far more than each commit in it: a gRPC call here (an empty Range took 125
to 160 µs of the calling thread's CPU on this machine under load, and about
as much again in gRPC's threads), one watch message read by every agent, a
raft proposal and an fsync on every member, all on the same few cores as
the agents. With four Txns sent at once, commits arriving while one was out
mostly took a free slot alone (3.4 commits per Txn at 64 concurrent
registrations over two agents); two at once made 6 to 8 per Txn; one at a
time (the backend's `max_sending`) 11 to 13, with less agent CPU per
registration and a higher rate (docs/benchmarks.md, "Cluster mode"). etcd
is not left idle by it: every agent has its own Txn out, and a cluster has
several agents.

The other slots (spares) go only when the Txns out each carry one commit
and the oldest has been out longer than `overdue` (30 ms): a write stuck on
a hung member, at low load, must not hold up the next ones for long. Such a
spare Txn carries one commit, because it may go into the same stall: a
commit that stays queued can still fail cleanly as never sent, one sent
into a stall gets OutcomeUnknown and its slot must be fenced. Unless etcd
answered a Txn (applied it) after the oldest one out was sent: then the
stall is that Txn's own (a retry on another member), not etcd's, and a
spare takes whatever may go, so that one slow Txn does not leave every
other commit to a one-commit Txn of its own. Txns that carry several
commits open the spare slots only once the oldest is `STALLED` times
overdue (210 ms): sooner, under load (or in an agent short of CPU, which
sees every Txn late) that only shrank the batches (measured: 4.9 to 5.0
commits per Txn when single-commit Txns opened them without a timer, 5.5
under callgrind with a timer alone); never, one slow batched Txn (sent
again commit by commit after a refusal, judged after a failed compare,
waiting for a lease) held every other write of the agent. Spares do not count as the Txns
sent at once: counted, they kept every later Txn at one commit for as long
as Txns took longer than `overdue` (a slow disk, a distant member: 1.0
commits per Txn and p99 5 s at 50 ms per Txn and 500 commits/s, in a
review's simulation). A slot being fenced does not count as sending.

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

Cost. This bookkeeping runs for every commit, so it is kept to set operations
done in C: a commit's keys are frozensets made once; the keys in flight are
plain sets (no two commits in flight write one key, since the second would
depend on the first, so removing a commit's writes cannot drop another's)
and a count per read key (several commits in flight may read one key); range
conditions, rare, are a list. A scan starts from a copy of the flight's
footprint and adds every commit it passes, so each queued commit is tested
once against everything it may depend on. Deadlines need no timer per commit: commits
join the queue in deadline order (each deadline is `timeout` after queueing),
and taking commits out of the middle keeps that order, so the head's deadline
is the earliest and one timer at the head expires whatever is due. A commit
whose deadline is earlier than one already queued (not made by this
backend's callers, but allowed) gets a timer of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._exceptions import OutcomeUnknown, StorageError, StoreBusy, StoreUnavailable
from .base import Condition, Entry

log = logging.getLogger("waypost.storage.etcd")

MAX_QUEUED = 10_000
MAX_SCAN = 256  # queued commits looked at per Txn, to bound the cost of ordering
MAX_SENDING = 1  # Txns sent at once by the etcd backend (see "One sent" above)
OVERDUE = 0.03  # seconds after which single-commit Txns out let a spare slot go
#: how many `overdue`s a Txn carrying several commits may take before a spare
#: goes anyway (about 200 ms): a slow batched Txn (sent again commit by commit,
#: judged after a refused compare, a lease renewed) must not hold every write
STALLED = 7

#: the keys and values one merged Txn may carry: etcd refuses a request over
#: its --max-request-bytes (1.5 MiB by default) before proposing it, and the
#: merged batch would then be sent again commit by commit, N+1 round trips.
#: A commit larger than this goes alone (three 512 KiB KV values, Consul's
#: largest, would otherwise merge into a refused Txn).
MAX_BYTES = 1024 * 1024

Outcome = int | BaseException
_NO_KEYS: frozenset[str] = frozenset()
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
        "size",
        "spans",
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
        spans: Sequence[Any] | None = None,
        refresh: Callable[[], list[Entry]] | None = None,
    ) -> None:
        self.ops = ops
        self.conditions = tuple(conditions)
        self.deadline = deadline
        #: the backend's compares for the conditions, made once (a range
        #: condition may need several); the batcher only counts them
        self.spans = tuple(spans) if spans is not None else ()
        self.compares = len(self.spans) if spans is not None else len(self.conditions)
        #: called when the commit is taken into a Txn, to build its ops from
        #: the state at that moment (the lease re-put uses it)
        self.refresh = refresh
        self.writes = frozenset([op.key for op in ops])
        #: keys and values, for the batcher's byte cap (a refresh re-puts the same keys)
        self.size = sum([len(op.key) + len(op.value or b"") for op in ops])
        if self.conditions:
            self.reads = frozenset([c.key for c in self.conditions if not c.range_end])
            self.ranges = tuple([(c.key, c.range_end) for c in self.conditions if c.range_end])
        else:
            self.reads, self.ranges = _NO_KEYS, ()
        self.future: asyncio.Future[int] | None = None
        self.timer: asyncio.TimerHandle | None = None  # only for an out-of-order deadline
        self.state = "new"  # -> queued -> sent -> done


class _Footprint:
    """The keys a set of commits writes, reads and guards, to test dependence.

    Commits are only added: the footprint of the commits scanned before
    another one while a Txn is being filled."""

    __slots__ = ("ranges", "reads", "writes")

    def __init__(self) -> None:
        self.writes: set[str] = set()
        self.reads: set[str] = set()
        self.ranges: list[tuple[str, str]] = []

    def add(self, commit: Commit) -> None:
        self.writes.update(commit.writes)
        if commit.reads:
            self.reads.update(commit.reads)
        if commit.ranges:
            self.ranges += commit.ranges

    def copy(self) -> _Footprint:
        other = _Footprint()
        other.writes, other.reads, other.ranges = (
            set(self.writes),
            set(self.reads),
            list(self.ranges),
        )
        return other

    def blocks(self, commit: Commit) -> bool:
        """True when `commit` depends on any commit of this footprint: it writes
        what they write or read, reads what they write, writes into a range
        they guard, or guards a range they write into."""
        writes, mine = self.writes, commit.writes
        if not writes.isdisjoint(mine) or not self.reads.isdisjoint(mine):
            return True
        if commit.reads and not writes.isdisjoint(commit.reads):
            return True
        if self.ranges and _any_in(mine, self.ranges):
            return True
        return bool(commit.ranges and writes and _any_in(writes, commit.ranges))


class _Flight(_Footprint):
    """The footprint of the commits in flight: they leave it when their Txn ends."""

    __slots__ = ("_readers",)

    def __init__(self) -> None:
        super().__init__()
        self._readers: dict[str, int] = {}  # key -> commits in flight that read it

    def add_all(self, batch: list[Commit]) -> None:
        writes, readers = self.writes, self._readers
        for commit in batch:
            assert writes.isdisjoint(commit.writes), "two commits in flight write one key"
            writes.update(commit.writes)
            for key in commit.reads:
                readers[key] = readers.get(key, 0) + 1
                self.reads.add(key)
            if commit.ranges:
                self.ranges += commit.ranges

    def remove_all(self, batch: list[Commit]) -> None:
        writes, readers = self.writes, self._readers
        for commit in batch:
            writes.difference_update(commit.writes)
            for key in commit.reads:
                readers[key] -= 1
                if not readers[key]:
                    del readers[key]
                    self.reads.discard(key)
            for piece in commit.ranges:
                self.ranges.remove(piece)


def _any_in(keys: frozenset[str] | set[str], ranges: Sequence[tuple[str, str]]) -> bool:
    return any(start <= key < end for key in keys for start, end in ranges)


class GroupCommitter:
    def __init__(
        self,
        send: Send,
        fence: Fence,
        max_inflight: int = 4,
        max_ops: int = 100,
        max_bytes: int = MAX_BYTES,
        max_queued: int = MAX_QUEUED,
        max_sending: int | None = None,
        overdue: float = OVERDUE,
    ) -> None:
        self._send = send
        self._fence = fence
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        #: Txns being sent (a slot being fenced does not count): see the docstring
        self._max_sending = max_inflight if max_sending is None else max_sending
        self._overdue = overdue
        #: slot -> (when its Txn was sent, in loop time; how many commits it
        #: carries; whether it is a spare). Spares do not count against
        #: max_sending, else spares opened by one stall would keep every later
        #: Txn at one commit for as long as Txns take longer than `overdue`
        self._sending: dict[int, tuple[float, int, bool]] = {}
        self._overdue_timer: asyncio.TimerHandle | None = None
        self._overdue_at = float("inf")  # when that timer fires
        #: loop time of the last answer that applied a Txn (see the spares above)
        self._answered = float("-inf")
        self.max_queued = max_queued
        self._queue: deque[Commit] = deque()  # in the order of submit(), so of deadlines
        self._waiting = 0  # commits queued and not yet settled
        self._last_deadline = float("-inf")  # of the last commit queued
        self._timer: asyncio.TimerHandle | None = None  # expires the head of the queue
        self._flight = _Flight()
        self._free_slots = list(range(max_inflight - 1, -1, -1))
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: the loop of the first submit() (asyncio.get_running_loop() costs a
        #: system call on Python 3.11; the committer wants it several times per commit)
        self._loop: asyncio.AbstractEventLoop | None = None
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
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        commit.future = future
        commit.state = "queued"
        self._waiting += 1
        self._arm(loop, commit)
        self._queue.append(commit)
        self._kick()
        try:
            return await future
        except asyncio.CancelledError:
            self._left_queue(commit)  # the caller gave up (a settled commit is left as is)
            raise

    async def close(self) -> None:
        """Fail what is queued and stop the Txns in flight."""
        self._closed = True
        for timer in (self._timer, self._overdue_timer):
            if timer is not None:
                timer.cancel()
        while self._queue:
            self._fail(self._queue.popleft(), StorageError("the etcd store was closed"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- queue ---------------------------------------------------------------

    def _arm(self, loop: asyncio.AbstractEventLoop, commit: Commit) -> None:
        """Make sure `commit` expires at its deadline if it is still queued then."""
        if commit.deadline < self._last_deadline:
            commit.timer = loop.call_at(commit.deadline, self._expire, commit)
            return
        self._last_deadline = commit.deadline
        if self._timer is None:
            self._timer = loop.call_at(commit.deadline, self._expire_due)

    def _expire_due(self) -> None:
        """The head timer: expire the queued commits whose deadline passed, and
        arm the timer again for the new head."""
        self._timer = None
        loop = self._running()
        now, queue = loop.time(), self._queue
        while queue and (queue[0].state != "queued" or queue[0].deadline <= now):
            self._expire(queue.popleft())
        if queue and not self._closed:
            self._timer = loop.call_at(queue[0].deadline, self._expire_due)

    def _left_queue(self, commit: Commit) -> None:
        """A queued commit is settled without being sent (expired, closed, cancelled)."""
        if commit.state == "queued":
            self._waiting -= 1
            commit.state = "done"
        if commit.timer is not None:
            commit.timer.cancel()

    def _fail(self, commit: Commit, error: BaseException) -> None:
        """Settle a commit that was never sent (no-op if it was sent or settled)."""
        if commit.state == "queued":
            _settle(commit, error)
            self._left_queue(commit)

    def _expire(self, commit: Commit) -> None:
        self._fail(
            commit,
            StoreUnavailable(
                "the write waited in this agent's queue until its deadline without being "
                "sent to etcd (etcd is slow, or an earlier write to the same keys is still "
                "in flight); it was not made"
            ),
        )

    def _running(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "only called once a commit was submitted"
        return self._loop

    def _kick(self) -> None:
        loop = self._running()
        while self._queue and self._free_slots and not self._closed:
            most, spare = self._may_carry(loop)
            if not most:
                return
            batch = self._take(most)
            if not batch:
                return
            slot = self._free_slots.pop()
            self._sending[slot] = (loop.time(), len(batch), spare)
            self._flight.add_all(batch)
            task = loop.create_task(self._flush(slot, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, most: int) -> list[Commit]:
        """The queued commits that may go together now (at most `most`), in queue order."""
        now = self._running().time()
        batch: list[Commit] = []
        # what a commit may depend on: the commits in flight and every commit
        # scanned before it, taken or not (one footprint, one test per commit)
        earlier = self._flight.copy()
        max_ops, max_bytes = self._max_ops, self._max_bytes
        ops = compares = size = scanned = 0
        index = 0
        queue = self._queue
        while index < len(queue) and scanned < MAX_SCAN:
            commit = queue[index]
            future = commit.future
            if commit.state != "queued" or future is None or future.done():
                self._left_queue(commit)
                del queue[index]
                continue
            if commit.deadline <= now:
                self._expire(commit)
                del queue[index]
                continue
            scanned += 1
            if earlier.blocks(commit):
                earlier.add(commit)  # later commits on its keys must wait for it too
                index += 1
                continue
            if batch and (
                ops + len(commit.ops) > max_ops
                or compares + commit.compares > max_ops
                or size + commit.size > max_bytes
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
            earlier.add(commit)
            ops += len(commit.ops)
            compares += commit.compares
            size += commit.size
            if ops >= max_ops or compares >= max_ops or len(batch) >= most:
                break
        return batch

    # -- flight --------------------------------------------------------------

    async def _flush(self, slot: int, batch: list[Commit]) -> None:
        """Send one Txn on `slot` (its commits are already in the flight footprint)."""
        try:
            self.txns += 1
            try:
                outcomes = await self._send(slot, batch, min(c.deadline for c in batch))
                if any(type(outcome) is int for outcome in outcomes):
                    self._answered = self._running().time()
            except StorageError as exc:
                outcomes = [exc] * len(batch)
            except Exception as exc:  # a bug: the Txn may or may not have gone out
                log.exception("etcd group commit failed unexpectedly")
                outcomes = [OutcomeUnknown(f"the write got no answer ({exc!r})")] * len(batch)
            finally:
                del self._sending[slot]  # answered (or given up): another may be sent
            if _settle_all(batch, outcomes):
                if self._queue and not self._closed:  # not held by this slot's fence
                    self._running().call_soon(self._kick)
                # The Txn may still be applied later; keep its keys and slot
                # until the backend has made sure it either did or never will.
                await self._fence(slot)
        finally:
            for commit in batch:
                if commit.future is not None and not commit.future.done():
                    _settle(
                        commit,
                        OutcomeUnknown("the etcd store was closed while the write was in flight"),
                    )
                commit.state = "done"
            self._flight.remove_all(batch)
            self._free_slots.append(slot)
            if self._queue and not self._closed:  # nothing queued: the next submit() kicks
                self._running().call_soon(self._kick)

    def _may_carry(self, loop: asyncio.AbstractEventLoop) -> tuple[int, bool]:
        """How many commits a Txn sent now may carry (0: none may go now), and
        whether it is a spare (see "One sent at once" above). When a spare slot
        may open later, a timer looks at the queue again then."""
        normal = [(sent, commits) for sent, commits, spare in self._sending.values() if not spare]
        if len(normal) < self._max_sending:
            return MAX_SCAN, False
        oldest = min(sent for sent, _ in normal)
        # batching: the next answer frees a slot soon enough, unless it is stalled
        late = STALLED if any(commits > 1 for _, commits in normal) else 1
        due = oldest + self._overdue * late
        if loop.time() >= due:
            # etcd applied a Txn since the oldest went out: the stall is its own
            return (MAX_SCAN if self._answered > oldest else 1), True
        if due < self._overdue_at:  # none armed, or armed for a later Txn's due
            if self._overdue_timer is not None:
                self._overdue_timer.cancel()
            self._overdue_timer = loop.call_at(due, self._overdue_kick)
            self._overdue_at = due
        return 0, False

    def _overdue_kick(self) -> None:
        self._overdue_timer, self._overdue_at = None, float("inf")
        self._kick()


def _settle_all(batch: list[Commit], outcomes: list[Outcome]) -> bool:
    """Settle each commit with its outcome; True if any outcome is unknown
    (whether or not its caller still waits: the slot must be fenced)."""
    unknown = False
    for commit, outcome in zip(batch, outcomes, strict=True):
        if type(outcome) is int:
            future = commit.future
            if future is not None and not future.done():
                future.set_result(outcome)
            continue
        _settle(commit, outcome)
        unknown = unknown or isinstance(outcome, OutcomeUnknown)
    return unknown


def _settle(commit: Commit, outcome: Outcome) -> None:
    future = commit.future
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
