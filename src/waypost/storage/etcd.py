"""`etcd://h1:2379,h2:2379,h3:2379`: many agents sharing one catalog in etcd.

Design
------
Keys. Every catalog key `k` lives at `<prefix>k` (default prefix `/waypost/`),
the msgpack value as is. One extra key, `<prefix>_rev`, is rewritten by every
commit: it makes every commit, even one that only deletes absent keys, create a
revision whose events this agent will see, and it tells `confirm()` the
revision of the last commit made by any agent.

Index. The etcd revision is the catalog index: a commit is one etcd Txn and
returns the revision in the Txn's response header; entries carry their keys'
create_revision / mod_revision. Every agent therefore reports the same
X-Consul-Index for the same state. Under load, concurrent commits share a Txn
(group commit, see _etcd_batch.py) and then share its revision.

Mirror. The catalog never reads etcd. `open()` lists the prefix at one
revision R (paged, all pages at R) and hands it over as a snapshot, then one
watch on the prefix, started at R+1, feeds every later change, the agent's
own included, to `apply()` in revision order, one call per revision.
`commit()` returns only after the watch has applied the commit's revision,
so an acknowledged write is readable here (and everything before it).
If the watch breaks (member killed, no leader) it is re-created on another
member from the last applied revision + 1, so nothing is skipped or repeated.
If that revision was compacted meanwhile, the agent lists again and applies
a snapshot: keys deleted in the gap disappear, nothing is lost.

Lease. Open grants one lease (TTL `lease_ttl`, default 10s) and a background
stream keeps it alive every TTL/3. Entries marked `ephemeral` (the `l/<node>`
liveness key that drives each node's serfHealth check) are put with it, and
the backend remembers them. If etcd reports the lease gone (it expired while
this agent could not reach etcd), a new lease is granted and the remembered
keys are put again, so the node turns passing again everywhere. `close()`
revokes the lease: a stopped agent's node turns critical at once; a killed
one's after the TTL.

Failure. A monitor asks a member for its status every second. While no member
answers with a known leader, `health()` says `known_leader=False` and
`last_contact_ms` grows; reads go on from the mirror. A commit is tried until
its deadline (`timeout`, default 5s) across members, riding out a leader
election, but fails at once with StoreUnavailable when every member refuses
connections: writes are never queued. `confirm()` is a quorum read. When etcd
comes back, the watch resumes from its revision, the keep-alive resumes (or
re-grants), and the monitor flips health back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from typing import Any, Final

import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from .._exceptions import StorageError, StoreUnavailable
from ._etcd_batch import GroupCommitter
from ._etcd_config import EtcdConfig, parse_url
from ._etcd_session import Endpoint, LeaseNotFound, Session, describe
from .base import ApplyFn, Condition, Entry, Storage, StoreHealth

log = logging.getLogger("waypost.storage.etcd")

META_KEY: Final = "_rev"
PAGE_SIZE: Final = 2000
PROBE_INTERVAL: Final = 1.0
PROBE_TIMEOUT: Final = 1.0
CLOSE_TIMEOUT: Final = 2.0
_BACKOFF_START: Final = 0.1
_BACKOFF_MAX: Final = 1.0


class _StreamEnded(Exception):
    """A watch or keep-alive stream ended or was cancelled by the member."""


class EtcdStorage(Storage):
    """The etcd backend: writes through etcd, reads from a watch-fed mirror."""

    def __init__(self, url: str) -> None:
        self.config: EtcdConfig = parse_url(url)
        self._session = Session(self.config)
        self._prefix = self.config.prefix.encode()
        self._prefix_end = _range_end(self._prefix)
        self._apply: ApplyFn | None = None
        self._revision = 0  # last revision applied to the mirror
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._lease_id = 0
        self._lease_lock = asyncio.Lock()
        self._ephemeral: dict[str, bytes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._batcher = GroupCommitter(self._send)
        self._healthy = False  # a member with a leader answered the last probe
        self._watching = False  # the watch stream is established
        self._watch_ready = asyncio.Event()
        self._closed = False
        self._stats = dict.fromkeys(
            ("commits", "relists", "watch_restarts", "lease_grants", "keepalive_restarts"), 0
        )

    # -- Storage interface -------------------------------------------------

    async def open(self, apply: ApplyFn) -> None:
        """List the prefix, apply it as a snapshot, grant the lease, start following.

        Raises:
            StoreUnavailable: etcd could not be reached within the timeout.
            StorageError: etcd refused (bad credentials, permissions).
        """
        self._apply = apply
        deadline = self._deadline()
        await self._relist(deadline)
        await self._grant_lease(deadline)
        self._healthy = True
        for loop_fn in (self._watch_loop, self._keepalive_loop, self._monitor_loop):
            self._spawn(loop_fn())
        await self._wait_watching(deadline)

    async def _wait_watching(self, deadline: float) -> None:
        """Return once the watch stream is established, so changes are followed."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._watch_ready.wait(), max(remaining, 0.5))
        except TimeoutError:
            await self.close()
            raise self._session.unavailable("watch") from None

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        # TEMPORARY until conditions land: ignored here.
        """Write `ops` as one etcd Txn and return its revision once the mirror has it.

        Raises:
            StoreUnavailable: no etcd member with a leader answered before the deadline.
            StorageError: etcd refused the batch (too many ops, too large, no
                permission), or the store is closed.
        """
        if self._closed or self._apply is None:
            raise StorageError("the etcd store is not open")
        deadline = self._deadline()
        ops = list({op.key: op for op in ops}.values())  # etcd rejects a key twice in one Txn
        revision = await self._batcher.submit(ops, deadline)
        self._stats["commits"] += 1
        await self._caught_up(revision, deadline + self.config.timeout, "write")
        return revision

    async def _send(self, ops: list[Entry], deadline: float) -> int:
        """Write one (possibly merged) batch; the batcher calls this."""
        try:
            response = await self._txn(ops, deadline)
        except StoreUnavailable:
            self._healthy = False
            raise
        self._remember(ops)
        revision: int = response.header.revision
        return revision

    async def close(self, *, revoke_lease: bool = True) -> None:
        """Stop following etcd, revoke the lease (best effort) and close the channels.

        With `revoke_lease=False` the lease is left to expire after its TTL, as
        when the process dies (tests use it to play a crash in-process).
        """
        if self._closed:
            return
        self._closed = True
        await _bounded("stopping commits", self._batcher.close())
        for task in self._tasks:
            task.cancel()
        await _bounded("stopping the watch", asyncio.gather(*self._tasks, return_exceptions=True))
        self._fail_waiters(StorageError("the etcd store was closed"))
        if self._lease_id and revoke_lease:
            await _bounded("revoking the lease", self._revoke_lease())
        await _bounded("closing channels", self._session.close())

    def health(self) -> StoreHealth:
        if self._healthy and self._watching:
            return StoreHealth(known_leader=True, last_contact_ms=0)
        silent = time.monotonic() - self._session.last_contact
        return StoreHealth(known_leader=False, last_contact_ms=int(silent * 1000))

    async def confirm(self) -> None:
        """Quorum-read the last commit's revision and wait until the mirror has it.

        Raises:
            StoreUnavailable: etcd has no reachable leader, or the mirror is behind.
        """
        deadline = self._deadline()
        key = self._prefix + META_KEY.encode()
        try:
            call = self._session.unary("kv", "Range", rpc.RangeRequest(key=key))
            response = await self._session.request("consistent read", call, deadline)
        except StoreUnavailable:
            self._healthy = False
            raise
        if response.kvs:
            await self._caught_up(response.kvs[0].mod_revision, deadline, "consistent read")

    def statistics(self) -> dict[str, float]:
        return {
            **self._stats,
            "revision": self._revision,
            "retries": self._session.retries,
            "txns": self._batcher.txns,
            "known_leader": float(self._healthy),
        }

    # -- writes ------------------------------------------------------------

    async def _txn(self, ops: list[Entry], deadline: float) -> Any:
        """One Txn for the batch; a lost lease is re-granted once and the Txn retried."""
        for _ in range(2):
            lease = self._lease_id
            call = self._session.unary("kv", "Txn", self._txn_request(ops, lease))
            try:
                return await self._session.request("write", call, deadline)
            except LeaseNotFound:
                await self._renew_lease(deadline, lost=lease)
        raise StorageError("etcd keeps refusing this agent's lease; the write was not made")

    def _txn_request(self, ops: Iterable[Entry], lease: int) -> rpc.TxnRequest:
        success = [self._request_op(op, lease) for op in ops]
        meta = rpc.PutRequest(key=self._prefix + META_KEY.encode(), value=b"")
        success.append(rpc.RequestOp(request_put=meta))
        return rpc.TxnRequest(success=success)

    def _request_op(self, op: Entry, lease: int) -> rpc.RequestOp:
        key = self._prefix + op.key.encode()
        if op.value is None:
            return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
        put = rpc.PutRequest(key=key, value=op.value, lease=lease if op.ephemeral else 0)
        return rpc.RequestOp(request_put=put)

    def _remember(self, ops: Iterable[Entry]) -> None:
        """Track which keys hang on the lease, to put them again if it is lost."""
        for op in ops:
            if op.value is not None and op.ephemeral:
                self._ephemeral[op.key] = op.value
            else:
                self._ephemeral.pop(op.key, None)

    async def _caught_up(self, revision: int, deadline: float, what: str) -> None:
        """Wait until the mirror has applied `revision`.

        Raises:
            StorageError: the watch did not deliver it before `deadline`.
        """
        if self._revision >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._seq), future))
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(future, max(remaining, 0.01))
        except TimeoutError:
            raise StoreUnavailable(
                f"the {what} reached etcd (revision {revision}) but this agent's watch has not "
                f"delivered it yet (at {self._revision}); it will show once the watch catches up"
            ) from None

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._revision:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(None)

    def _fail_waiters(self, exc: Exception) -> None:
        while self._waiters:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_exception(exc)

    # -- mirror ------------------------------------------------------------

    async def _relist(self, deadline: float) -> None:
        """List the whole prefix at one revision and apply it as a snapshot."""
        entries, revision = await self._list_all(deadline)
        assert self._apply is not None
        self._revision = max(self._revision, revision)
        self._apply(revision, entries, snapshot=True)
        self._stats["relists"] += 1
        self._wake()

    async def _list_all(self, deadline: float) -> tuple[list[Entry], int]:
        start, revision, entries = self._prefix, 0, []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=self._prefix_end, revision=revision, limit=PAGE_SIZE
            )
            call = self._session.unary("kv", "Range", request)
            response = await self._session.request("list", call, deadline)
            revision = revision or response.header.revision
            entries += [e for kv in response.kvs if (e := self._entry(kv)) is not None]
            if not response.more:
                return entries, revision
            start = response.kvs[-1].key + b"\0"

    def _entry(self, kv: Any, deleted: bool = False) -> Entry | None:
        key = kv.key[len(self._prefix) :].decode("utf-8", "replace")
        if key == META_KEY:
            return None
        if deleted:
            return Entry(key, None, 0, kv.mod_revision)
        return Entry(key, kv.value, kv.create_revision, kv.mod_revision, ephemeral=kv.lease != 0)

    async def _watch_loop(self) -> None:
        backoff = _BACKOFF_START
        while True:
            endpoint = self._session.current()
            try:
                await self._follow(endpoint)
                backoff = _BACKOFF_START
                continue
            except grpc.aio.AioRpcError as exc:
                await self._stream_failed("watch", endpoint, exc)
            except (_StreamEnded, StorageError, asyncio.InvalidStateError) as exc:
                log.warning("etcd watch on %s stopped: %s", endpoint.address, exc)
                self._session.failed(endpoint)
            except Exception:
                log.exception("etcd watch failed unexpectedly; restarting it")
            self._watching = False
            self._stats["watch_restarts"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _follow(self, endpoint: Endpoint) -> None:
        """Watch from the mirror's revision + 1 and apply what comes; return after a re-list.

        Raises:
            grpc.aio.AioRpcError, _StreamEnded: the stream broke (retried by the loop).
        """
        metadata = self._session.metadata(("hasleader", "true"))
        call = endpoint.watch.Watch(metadata=metadata)
        try:
            create = rpc.WatchCreateRequest(
                key=self._prefix, range_end=self._prefix_end, start_revision=self._revision + 1
            )
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise _StreamEnded("the member closed the watch stream")
                self._session.contact()
                self._watching = True
                self._watch_ready.set()
                if response.compact_revision:
                    await self._compacted(response.compact_revision)
                    return
                if response.canceled:
                    raise _StreamEnded(f"watch cancelled: {response.cancel_reason or 'no reason'}")
                if response.events:
                    self._on_events(response.events)
        finally:
            call.cancel()

    async def _compacted(self, compact_revision: int) -> None:
        log.warning(
            "etcd compacted revision %d past this agent's %d; listing the catalog again",
            compact_revision,
            self._revision,
        )
        await self._relist(self._deadline())

    def _on_events(self, events: Iterable[Any]) -> None:
        """Apply events one revision at a time, in order."""
        assert self._apply is not None
        for revision, group in itertools.groupby(events, key=lambda e: e.kv.mod_revision):
            if revision <= self._revision:
                continue
            entries = [
                entry
                for event in group
                if (entry := self._entry(event.kv, deleted=event.type == rpc.Event.DELETE))
            ]
            self._revision = revision
            if entries:
                self._apply(revision, entries)
        self._wake()

    # -- lease -------------------------------------------------------------

    async def _grant_lease(self, deadline: float) -> None:
        request = rpc.LeaseGrantRequest(TTL=self.config.lease_ttl)
        call = self._session.unary("lease", "LeaseGrant", request)
        response = await self._session.request("lease grant", call, deadline)
        self._lease_id = response.ID
        self._stats["lease_grants"] += 1

    async def _renew_lease(self, deadline: float, lost: int) -> None:
        """Replace an expired lease and put the keys that hung on it again."""
        async with self._lease_lock:
            if self._lease_id != lost:
                return  # another task already replaced it
            log.warning("etcd lease %x expired; granting a new one", lost)
            await self._grant_lease(deadline)
            if not self._ephemeral:
                return
            ops = [Entry(k, v, ephemeral=True) for k, v in self._ephemeral.items()]
            call = self._session.unary("kv", "Txn", self._txn_request(ops, self._lease_id))
            await self._session.request("liveness re-put", call, deadline)

    async def _revoke_lease(self) -> None:
        request = rpc.LeaseRevokeRequest(ID=self._lease_id)
        try:
            await self._session.current().lease.LeaseRevoke(
                request, timeout=1.0, metadata=self._session.metadata()
            )
        except grpc.aio.AioRpcError as exc:
            log.info("could not revoke the etcd lease (it expires by itself): %s", describe(exc))

    async def _keepalive_loop(self) -> None:
        backoff = _BACKOFF_START
        while True:
            endpoint = self._session.current()
            try:
                await self._keep_alive(endpoint)
            except grpc.aio.AioRpcError as exc:
                await self._stream_failed("lease keep-alive", endpoint, exc)
            except (_StreamEnded, StorageError, TimeoutError, asyncio.InvalidStateError) as exc:
                log.warning("etcd lease keep-alive on %s stopped: %s", endpoint.address, exc)
                self._session.failed(endpoint)
            except Exception:
                log.exception("etcd lease keep-alive failed unexpectedly; restarting it")
            self._stats["keepalive_restarts"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _keep_alive(self, endpoint: Endpoint) -> None:
        """Refresh the lease every TTL/3 on one stream; re-grant it if etcd lost it.

        Raises:
            grpc.aio.AioRpcError, _StreamEnded, TimeoutError: the stream broke.
        """
        call = endpoint.lease.LeaseKeepAlive(metadata=self._session.metadata())
        try:
            while True:
                lease = self._lease_id
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                response = await asyncio.wait_for(call.read(), self.config.timeout)
                if response is grpc.aio.EOF:
                    raise _StreamEnded("the member closed the keep-alive stream")
                self._session.contact()
                if response.TTL <= 0:
                    await self._renew_lease(self._deadline(), lost=lease)
                    continue
                await asyncio.sleep(self.config.lease_ttl / 3)
        finally:
            call.cancel()

    # -- health ------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        while True:
            try:
                self._healthy = await self._probe()
            except Exception:
                log.exception("etcd health probe failed unexpectedly")
                self._healthy = False
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

    # -- helpers -----------------------------------------------------------

    async def _stream_failed(
        self, what: str, endpoint: Endpoint, exc: grpc.aio.AioRpcError
    ) -> None:
        log.warning("etcd %s on %s failed: %s", what, endpoint.address, describe(exc))
        if self._session.token_refused(exc):
            await self._session.reauthenticate(endpoint)
            return
        self._session.failed(endpoint)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.config.timeout

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_report_crash)
        self._tasks.append(task)


def _range_end(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (etcd's prefix range end)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def _bounded(step: str, awaitable: Awaitable[Any], timeout: float = CLOSE_TIMEOUT) -> None:
    """Await a shutdown step, but never let it hold close() up for long."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("etcd store: %s took over %.0fs; going on without it", step, timeout)
        task.cancel()
    elif not task.cancelled() and task.exception() is not None:
        log.info("etcd store: %s failed: %s", step, task.exception())


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("etcd background task died", exc_info=task.exception())
