"""The etcd backend's lease: this agent's liveness in etcd.

Open grants one lease (TTL `lease_ttl`, default 10s) and a background stream
keeps it alive every TTL/3. Entries marked `ephemeral` (the `l/<node>`
liveness key that drives each node's serfHealth check) are put with it, and
`remember()` keeps them (the slot keys of _etcd_txn.py ride on it too, so
they vanish with the agent). If etcd reports the lease gone (it expired while
this agent could not reach etcd), a new lease is granted and the remembered
keys are put again by a commit through the group committer's queue (ordered
after any queued write to them), retried with backoff until it succeeds or the
store closes, so the node turns passing again everywhere. `revoke()` (at
close) makes a stopped agent's node turn critical at once; a killed one's
turns critical after the TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from .._exceptions import StorageError
from ._etcd_batch import Commit
from ._etcd_common import BACKOFF_MAX, BACKOFF_START, Context, StreamEnded
from ._etcd_session import Endpoint, describe
from .base import Entry

log = logging.getLogger("waypost.storage.etcd")

_REPUT_BACKOFF_MAX: Final = 2.0

Submit = Callable[[Commit], Awaitable[int]]


class Lease:
    """This agent's etcd lease and the keys that hang on it."""

    def __init__(self, ctx: Context, submit: Submit) -> None:
        self._ctx = ctx
        self._session = ctx.session
        self._stats = ctx.stats
        self._submit = submit  # the group committer's queue, for re-puts
        self.id = 0
        self._lock = asyncio.Lock()
        self._reput_lease = 0  # the lease the remembered ephemeral keys were last put with
        self._reput_task: asyncio.Task[None] | None = None
        self._ephemeral: dict[str, bytes] = {}

    async def grant(self, deadline: float) -> None:
        """Grant the first lease (at open)."""
        await self._grant(deadline)
        self._reput_lease = self.id

    def remember(self, commits: Iterable[Commit]) -> None:
        """Track which keys hang on the lease, to put them again if it is lost:
        the ops of `commits`, which may have been written, in order."""
        held = self._ephemeral
        for commit in commits:
            for op in commit.ops:
                if op.ephemeral and op.value is not None:
                    held[op.key] = op.value
                else:
                    held.pop(op.key, None)

    async def renew(self, deadline: float, lost: int) -> None:
        """Replace an expired lease and start putting the keys that hung on it again."""
        async with self._lock:
            if self.id != lost:
                return  # another task already replaced it
            log.warning("etcd lease %x expired; granting a new one", lost)
            await self._grant(deadline)
        if self._reput_task is None or self._reput_task.done():
            self._reput_task = self._ctx.spawn(self._reput_loop())

    async def revoke(self) -> None:
        """Revoke the lease, best effort (it expires by itself otherwise)."""
        request = rpc.LeaseRevokeRequest(ID=self.id)
        try:
            await self._session.current().lease.LeaseRevoke(
                request, timeout=1.0, metadata=self._session.metadata()
            )
        except grpc.aio.AioRpcError as exc:
            log.info("could not revoke the etcd lease (it expires by itself): %s", describe(exc))

    async def _grant(self, deadline: float) -> None:
        # A grant retried after a lost answer may leave an unused lease behind;
        # it holds no key and expires after its TTL.
        request = rpc.LeaseGrantRequest(TTL=self._ctx.config.lease_ttl)
        call = self._session.unary("lease", "LeaseGrant", request)
        response = await self._session.request("lease grant", call, deadline)
        self.id = response.ID
        self._stats["lease_grants"] += 1

    async def _reput_loop(self) -> None:
        """Put the remembered ephemeral keys with the current lease, until that succeeds.

        The re-put is a commit through the queue, so it lands after any write to
        those keys queued before it; its ops are taken when it is sent, so a key
        deleted meanwhile is not brought back.
        """
        backoff = BACKOFF_START
        while not self._ctx.closed and self._reput_lease != self.id:
            lease = self.id
            keys = list(self._ephemeral)
            if not keys:
                self._reput_lease = lease
                return

            def current(keys: list[str] = keys) -> list[Entry]:
                held = self._ephemeral
                return [Entry(k, held[k], ephemeral=True) for k in keys if k in held]

            commit = Commit(current(), (), self._ctx.deadline(), refresh=current)
            try:
                await self._submit(commit)
            except StorageError as exc:
                log.warning(
                    "etcd: putting this agent's liveness keys back failed (%s); retrying in %.1fs",
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _REPUT_BACKOFF_MAX)
                continue
            self._stats["liveness_reputs"] += 1
            if self.id == lease:
                self._reput_lease = lease

    # -- keep-alive --------------------------------------------------------------

    async def keepalive_loop(self) -> None:
        """Keep the lease alive until cancelled, re-opening the stream whenever it breaks."""
        backoff = BACKOFF_START
        while True:
            endpoint = self._session.current()
            try:
                await self._keep_alive(endpoint)
            except grpc.aio.AioRpcError as exc:
                await self._session.stream_failed("lease keep-alive", endpoint, exc)
            except (StreamEnded, StorageError, TimeoutError, asyncio.InvalidStateError) as exc:
                log.warning("etcd lease keep-alive on %s stopped: %s", endpoint.address, exc)
                self._session.failed(endpoint)
            except Exception:
                log.exception("etcd lease keep-alive failed unexpectedly; restarting it")
            self._stats["keepalive_restarts"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _keep_alive(self, endpoint: Endpoint) -> None:
        """Refresh the lease every TTL/3 on one stream; re-grant it if etcd lost it.

        Raises:
            grpc.aio.AioRpcError, StreamEnded, TimeoutError: the stream broke.
        """
        call = endpoint.lease.LeaseKeepAlive(metadata=self._session.metadata())
        config = self._ctx.config
        try:
            while True:
                lease = self.id
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                response = await asyncio.wait_for(call.read(), config.timeout)
                if response is grpc.aio.EOF:
                    raise StreamEnded("the member closed the keep-alive stream")
                self._session.contact()
                if response.TTL <= 0:
                    await self.renew(self._ctx.deadline(), lost=lease)
                    continue
                await asyncio.sleep(config.lease_ttl / 3)
        finally:
            call.cancel()
