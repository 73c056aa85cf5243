"""The storage interface under the catalog.

A backend keeps an ordered history of writes to a flat key space and tells the
catalog about every change, its own and (for shared stores such as etcd) those
made by other agents. The catalog never reads from a backend after start-up:
it applies the changes it is told about to its in-memory tables.

The contract, in order of importance:

1. `commit(ops, conditions)` returns only once the batch is durable, and the
   batch is all-or-nothing. Before it returns, the backend has called
   `apply(index, ops)` (on the event loop), so a caller that is acknowledged
   can read its write.
2. Conditions are checked atomically with the write, in commit order, against
   what is stored (not against any agent's copy): that is how the catalog
   validates a write against the state it lands on (optimistic concurrency,
   etcd's compare-and-swap on mod_revision). When one fails, nothing is
   written and `Conflict` is raised only after the conflicting change has been
   applied, so the caller's re-read sees it.
3. Commits never reorder: two commits that touch one key are applied and
   stored in the order `commit()` was called (for one caller that awaits each).
   A commit that cannot be queued (too many waiting) fails at once with
   StoreBusy; every commit has a deadline from the moment it is queued.
4. A mutation is never retried after an ambiguous error unless the retry is
   idempotent by construction; otherwise the caller gets OutcomeUnknown.
5. Indexes never decrease, across restarts too; a later commit never gets a
   lower index. (etcd may give concurrent commits merged into one transaction
   the same revision: blocking queries only need "greater than what I saw".)
6. `open(apply)` replays what is stored, as `apply(index, entries)` calls with
   each entry's own create and modify index, before it returns.
7. A backend that loses track of changes (an etcd watch whose revision was
   compacted) re-lists and calls `apply(index, everything, snapshot=True)`:
   the catalog then drops every key the snapshot does not hold.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol

import msgspec


class Entry(msgspec.Struct, frozen=True):
    """One key's new value; `value is None` deletes the key.

    `ephemeral` marks a key that lives only as long as the agent that wrote it
    (an etcd lease); backends without leases store it like any other key.
    """

    key: str
    value: bytes | None
    create_index: int = 0
    modify_index: int = 0
    ephemeral: bool = False


class Condition(msgspec.Struct, frozen=True):
    """What must hold for a commit to go ahead.

    Without `range_end`: `key`'s modify index is exactly `index` (0: the key
    is absent). With `range_end`: no key in [key, range_end) was modified after
    `index` (keys deleted since do not count). The first form guards a record
    that was read; the second guards "the set of keys under this prefix is
    what I saw at index N" (a node's services, a service's checks).
    """

    key: str
    index: int
    range_end: str = ""

    def holds(self, modify_index_of: dict[str, int]) -> bool:
        """Evaluate against a plain key -> modify index table (the memory backend)."""
        if not self.range_end:
            return modify_index_of.get(self.key, 0) == self.index
        return all(
            m <= self.index for k, m in modify_index_of.items() if self.key <= k < self.range_end
        )


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix` (etcd's range end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class ApplyFn(Protocol):
    def __call__(self, index: int, entries: list[Entry], snapshot: bool = False) -> None: ...


class StoreHealth(msgspec.Struct, frozen=True):
    """What a read's `X-Consul-KnownLeader` and `X-Consul-LastContact` report."""

    known_leader: bool = True
    last_contact_ms: int = 0


class Storage(abc.ABC):
    """A durable (or, for `memory://`, volatile) home for the catalog."""

    @abc.abstractmethod
    async def open(self, apply: ApplyFn) -> None:
        """Replay the stored state through `apply`, then start following changes."""

    #: True when other agents write to the same store (etcd): keys marked
    #: ephemeral then live on a lease. False for a store only this agent opens
    #: (it holds a lock on it), where no other agent can be alive.
    shared: bool = False

    @abc.abstractmethod
    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        """Make `ops` durable as one batch, if every condition holds, and return
        the index it was given.

        Raises:
            Conflict: a condition did not hold; nothing was written, and the
                change that broke it has been applied.
            StorageError: the batch was not written; nothing of it was applied.
            StoreUnavailable: the store cannot be reached; nothing was applied.
            StoreBusy: too many commits are waiting; this one was not queued.
            OutcomeUnknown: the batch was sent but the answer was lost.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending commits and release files, connections and threads."""

    def health(self) -> StoreHealth:
        """Whether the store is reachable, for read headers. Local stores always are."""
        return StoreHealth()

    async def confirm(self) -> None:
        """For `?consistent` reads: raise StoreUnavailable unless the store answers now."""

    def statistics(self) -> dict[str, float]:
        """Counters for /metrics (commits, batches, ...)."""
        return {}
