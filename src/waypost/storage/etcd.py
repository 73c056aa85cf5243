"""`etcd://h1:2379,h2:2379,h3:2379`: many agents sharing one catalog in etcd.

Design
------
`EtcdStorage` is the facade the catalog sees; the work is done by private
modules, each with a design comment on what it owns:

- `_etcd_common.py`: the key layout under the prefix (catalog keys, `_rev`,
  the slot keys) and the context the parts share;
- `_etcd_session.py`: gRPC channels to the members, tokens, the retry loops
  for reads and for idempotent writes;
- `_etcd_batch.py`: group commit: one bounded queue, one Txn sent at once
  (4 slots: the others are spares for a stalled Txn), commits that touch one
  key never reordered;
- `_etcd_txn.py`: the write path: conditions as Txn compares, per-slot
  nonces that make retries idempotent, fences after an unknown outcome;
- `_etcd_mirror.py`: the list and the watch that feed `apply()`, every
  revision once and in order;
- `_etcd_lease.py`: the agent's lease, its keep-alive and the re-put of the
  liveness keys after a lost lease.

Index. The etcd revision is the catalog index: a commit is one etcd Txn and
returns the revision in the Txn's response header; entries carry their keys'
create_revision / mod_revision. Every agent therefore reports the same
X-Consul-Index for the same state. Under load, concurrent commits share a Txn
(group commit) and then share its revision.

A commit returns once etcd committed its Txn and the mirror applied that
revision, so an acknowledged write is readable here; a Conflict is raised once
the mirror applied the change that broke the condition, so the re-read sees it.

Failure. A monitor asks a member for its status every second. While no member
answers with a known leader, `health()` says `known_leader=False` and
`last_contact_ms` grows; reads go on from the mirror. A commit is tried until
its deadline (`timeout`, default 5s, counted from when it is queued) across
members, riding out a leader election, but fails at once with
StoreUnavailable when every member refuses connections; at most 10,000
commits wait, more fail at once with StoreBusy. `confirm()` is a quorum read
of `_rev`, the revision of the last Txn by any agent. When etcd comes back,
the watch resumes from its revision, the keep-alive resumes (or re-grants),
and the monitor flips health back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Final

import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from .._exceptions import Conflict, OutcomeUnknown, StorageError, StoreUnavailable
from ._etcd_batch import MAX_SENDING, Commit, GroupCommitter
from ._etcd_common import Context, bounded
from ._etcd_config import EtcdConfig, parse_url
from ._etcd_lease import Lease
from ._etcd_mirror import Mirror
from ._etcd_txn import MAX_INFLIGHT, Conflicted, Writer
from .base import ApplyFn, Condition, Entry, Storage, StoreHealth

log = logging.getLogger("waypost.storage.etcd")

PROBE_INTERVAL: Final = 1.0
PROBE_TIMEOUT: Final = 1.0


class EtcdStorage(Storage):
    """The etcd backend: writes through etcd, reads from a watch-fed mirror."""

    shared = True

    def __init__(self, url: str) -> None:
        self.config: EtcdConfig = parse_url(url)
        self._ctx = Context(self.config)
        self._session = self._ctx.session
        self._mirror = Mirror(self._ctx)
        self._lease = Lease(self._ctx, submit=lambda commit: self._batcher.submit(commit))
        self._writer = Writer(self._ctx, self._lease)
        self._batcher = GroupCommitter(
            self._writer.send,
            self._writer.fence,
            max_inflight=MAX_INFLIGHT,
            max_sending=MAX_SENDING,
        )
        self._opened = False

    # -- Storage interface -------------------------------------------------

    async def open(self, apply: ApplyFn) -> None:
        """List the prefix, apply it as a snapshot, grant the lease, start following.

        Raises:
            StoreUnavailable: etcd could not be reached within the timeout.
            StorageError: etcd refused (bad credentials, permissions).
        """
        self._opened = True
        deadline = self._ctx.deadline()
        await self._mirror.start(apply, deadline)
        await self._lease.grant(deadline)
        self._ctx.healthy = True
        for loop in (self._mirror.run, self._lease.keepalive_loop, self._monitor_loop):
            self._ctx.spawn(loop())
        if not await self._mirror.wait_watching(deadline):
            await self.close()
            raise self._session.unavailable("watch")

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        """Write `ops` as one etcd Txn if `conditions` hold; return its revision once
        the mirror has it.

        Raises:
            Conflict: a condition did not hold; the change that broke it is applied.
            StoreBusy: too many commits are waiting; this one was not queued.
            StoreUnavailable: the commit was never sent (every member refused, no
                leader, or its deadline passed while it waited in the queue).
            OutcomeUnknown: it was sent but no answer came before the deadline.
            StorageError: etcd refused the batch (too many ops, too large, no
                permission), or the store is closed.
        """
        if self._ctx.closed or not self._opened:
            raise StorageError("the etcd store is not open")
        deadline = self._ctx.deadline()
        # etcd rejects a key twice in one Txn
        ops = list({op.key: op for op in ops}.values()) if len(ops) > 1 else list(ops)
        spans = self._writer.spans(conditions) if conditions else None
        stats = self._ctx.stats
        try:
            revision = await self._batcher.submit(Commit(ops, conditions, deadline, spans=spans))
        except Conflicted as conflict:
            stats["conflicts"] += 1
            await self._mirror.caught_up(
                conflict.revision, deadline + self.config.timeout, "conflicting change"
            )
            raise Conflict(conflict.message) from None
        except OutcomeUnknown:
            stats["outcome_unknown"] += 1
            raise
        stats["commits"] += 1
        await self._mirror.caught_up(revision, deadline + self.config.timeout, "write")
        if self._mirror.skipped(revision, ops):
            raise StorageError(
                f"the write was made in etcd (revision {revision}) but this agent could not "
                "apply it to its copy of the catalog (see the log); other agents have it"
            )
        return revision

    async def close(self, *, revoke_lease: bool = True) -> None:
        """Stop following etcd, revoke the lease (best effort) and close the channels.

        With `revoke_lease=False` the lease is left to expire after its TTL, as
        when the process dies (tests use it to play a crash in-process).
        """
        ctx = self._ctx
        if ctx.closed:
            return
        ctx.closed = True
        await bounded("stopping commits", self._batcher.close())
        for task in ctx.tasks:
            task.cancel()
        await bounded("stopping the watch", asyncio.gather(*ctx.tasks, return_exceptions=True))
        self._mirror.fail_waiters(StorageError("the etcd store was closed"))
        if self._lease.id and revoke_lease:
            await bounded("revoking the lease", self._lease.revoke())
        await bounded("closing channels", self._session.close())

    def health(self) -> StoreHealth:
        if self._ctx.healthy and self._mirror.watching:
            return StoreHealth(known_leader=True, last_contact_ms=0)
        silent = time.monotonic() - self._session.last_contact
        return StoreHealth(known_leader=False, last_contact_ms=int(silent * 1000))

    async def confirm(self) -> None:
        """Quorum-read the last commit's revision and wait until the mirror has it.

        Raises:
            StoreUnavailable: etcd has no reachable leader, or the mirror is behind.
        """
        deadline = self._ctx.deadline()
        try:
            call = self._session.unary("kv", "Range", rpc.RangeRequest(key=self._ctx.keys.meta))
            response = await self._session.request("consistent read", call, deadline)
        except StoreUnavailable:
            self._ctx.healthy = False
            raise
        if response.kvs:
            await self._mirror.caught_up(response.kvs[0].mod_revision, deadline, "consistent read")

    def statistics(self) -> dict[str, float]:
        return {
            **self._ctx.stats,
            "revision": self._mirror.revision,
            "retries": self._session.retries,
            "txns": self._batcher.txns,
            "queued": self._batcher.waiting,
            "busy": self._batcher.busy,
            "known_leader": float(self._ctx.healthy),
        }

    # -- health ------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        while True:
            try:
                self._ctx.healthy = await self._probe()
            except Exception:
                log.exception("etcd health probe failed unexpectedly")
                self._ctx.healthy = False
            await asyncio.sleep(PROBE_INTERVAL)

    async def _probe(self) -> bool:
        """Ask members in turn for their status; True once one knows a leader."""
        for _ in self.config.endpoints:
            endpoint = self._session.current()
            try:
                status = await endpoint.maintenance.Status(
                    rpc.StatusRequest(), timeout=PROBE_TIMEOUT, metadata=self._session.metadata()
                )
            except grpc.aio.AioRpcError:
                self._session.failed(endpoint)
                continue
            if status.leader:
                self._session.contact()
                return True
            self._session.failed(endpoint)
        return False
