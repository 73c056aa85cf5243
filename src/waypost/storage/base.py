"""The storage interface under the catalog.

A backend keeps an ordered history of writes to a flat key space and tells the
catalog about every change, its own and (for shared stores such as etcd) those
made by other agents. The catalog never reads from a backend after start-up:
it applies the changes it is told about to its in-memory tables.

The contract, in order of importance:

1. `commit(ops)` returns only once the batch is durable, and the batch is
   all-or-nothing. Before it returns, the backend has called `apply(index, ops)`
   (on the event loop), so a caller that is acknowledged can read its write.
2. Indexes never decrease, across restarts too; a later commit never gets a
   lower index. (etcd may give concurrent commits merged into one transaction
   the same revision: blocking queries only need "greater than what I saw".)
3. `open(apply)` replays what is stored, as `apply(index, entries)` calls with
   each entry's own create and modify index, before it returns.
4. A backend that loses track of changes (an etcd watch whose revision was
   compacted) re-lists and calls `apply(index, everything, snapshot=True)`:
   the catalog then drops every key the snapshot does not hold.
"""

from __future__ import annotations

import abc
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

    @abc.abstractmethod
    async def commit(self, ops: list[Entry]) -> int:
        """Make `ops` durable as one batch and return the index it was given.

        Raises:
            StorageError: the batch was not written; nothing of it was applied.
            StoreUnavailable: the store cannot be reached; nothing was applied.
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
