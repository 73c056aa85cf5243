"""The etcd backend's mirror: list the prefix, watch it, apply every revision once.

The catalog never reads etcd. `open()` lists the prefix at one revision R
(paged, all pages at R) and hands it over as a snapshot, then one watch on the
prefix, started at R+1, feeds every later change, the agent's own included, to
`apply()` in revision order, one call per revision. `caught_up(revision)` is
how a commit waits until the watch has applied its revision, so an
acknowledged write is readable here (and everything before it).

The mirror's revision advances only after `apply()` returned; if it raises,
the error is logged with its traceback and the watch starts again from that
revision (with backoff). If the same revision fails three times its entries
are applied one at a time and the ones that still fail are skipped (logged),
so one bad entry cannot stop the mirror or fail the commits merged with it;
`skipped(revision)` tells the commit that wrote it, which then fails.

If the watch breaks (member killed, no leader) it is re-created on another
member from the last applied revision + 1, so nothing is skipped or repeated;
so is a watch on a member that other calls find failing (a hung member keeps
its stream open but silent). If that revision was compacted meanwhile, the
mirror lists again and applies a snapshot: keys deleted in the gap disappear,
nothing is lost.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Iterable
from typing import Any, Final

import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from .._exceptions import StorageError, StoreUnavailable
from ._etcd_common import BACKOFF_MAX, BACKOFF_START, Context, StreamEnded
from ._etcd_session import Endpoint
from .base import ApplyFn, Entry

log = logging.getLogger("waypost.storage.etcd")

PAGE_SIZE: Final = 2000
APPLY_ATTEMPTS: Final = 3  # tries of one revision before its entries are applied one by one
_SKIPPED_KEPT: Final = 1000  # revisions whose skipped entries are remembered
_DELETE: Final = rpc.Event.DELETE


class _ApplyFailed(Exception):
    """`apply()` raised for a revision; the watch starts again from it."""


class _Waiters:
    """Commits waiting until the mirror applies their revision.

    Every commit waits here, so this is kept cheap: a heap by revision that
    `wake()` pops in order, and one timer, at the earliest deadline of those
    waiting, instead of an `asyncio.wait_for` (two futures and a timer) per
    commit. When it fires it fails the waiters that are due and is armed again
    for the earliest deadline left; waiters are few (those whose revision the
    watch has not delivered yet), so that scan is short.
    """

    def __init__(self, mirror: Mirror, ctx: Context) -> None:
        self._mirror = mirror
        self._ctx = ctx  # its loop: the store's
        self._heap: list[tuple[int, int, float, str, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    async def wait(self, revision: int, deadline: float, what: str) -> None:
        """Raises: StoreUnavailable once `deadline` (loop time) passes."""
        loop = self._ctx.loop
        deadline = max(deadline, loop.time() + 0.01)
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (revision, next(self._seq), deadline, what, future))
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        await future

    def wake(self, revision: int) -> None:
        """The mirror has applied `revision`: release everyone waiting for it or less."""
        heap = self._heap
        while heap and heap[0][0] <= revision:
            future = heapq.heappop(heap)[4]
            if not future.done():
                future.set_result(None)

    def fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, float("inf")
        while self._heap:
            future = heapq.heappop(self._heap)[4]
            if not future.done():
                future.set_exception(exc)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        """Fail the waiters whose deadline passed; arm again for the next one."""
        self._timer, self._timer_at = None, float("inf")
        loop = self._ctx.loop
        now = loop.time()
        for revision, _, deadline, what, future in self._heap:
            if deadline <= now and not future.done():
                future.set_exception(self._late(revision, what))
        self._heap = [w for w in self._heap if not w[4].done()]  # a cancelled caller too
        heapq.heapify(self._heap)
        if self._heap:
            self._arm(loop, min(w[2] for w in self._heap))

    def _late(self, revision: int, what: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"the {what} reached etcd (revision {revision}) but this agent's watch has not "
            f"delivered it yet (at {self._mirror.revision}); it will show once the watch catches up"
        )


class Mirror:
    """This agent's copy of the prefix, fed by one watch (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._session = ctx.session
        self._keys = ctx.keys
        self._stats = ctx.stats
        self._apply: ApplyFn | None = None
        self.revision = 0  # last revision applied
        self._failing: tuple[int, int] = (0, 0)  # (revision, failures) of apply()
        self._skipped: dict[int, set[str]] = {}  # revision -> keys apply() could not take
        self._waiters = _Waiters(self, ctx)
        self.watching = False  # the watch stream is established
        self._watch_ready = asyncio.Event()
        self._watch_call: tuple[Endpoint, Any] | None = None  # the live watch stream
        self._watch_abandoned = False
        self._session.on_failed.append(self._member_failed)

    async def start(self, apply: ApplyFn, deadline: float) -> None:
        """List the prefix and apply it as a snapshot (the watch starts with `run()`)."""
        self._apply = apply
        await self._relist(deadline)

    async def wait_watching(self, deadline: float) -> bool:
        """True once the watch stream is established, False if `deadline` passed first."""
        remaining = deadline - self._ctx.loop.time()
        try:
            await asyncio.wait_for(self._watch_ready.wait(), max(remaining, 0.5))
        except TimeoutError:
            return False
        return True

    def skipped(self, revision: int, ops: Iterable[Entry]) -> bool:
        """Whether apply() had to skip any key of `ops` at `revision`."""
        skipped = self._skipped.get(revision)
        return skipped is not None and any(op.key in skipped for op in ops)

    # -- waiting for a revision ----------------------------------------------

    async def caught_up(self, revision: int, deadline: float, what: str) -> None:
        """Wait until the mirror has applied `revision`.

        Raises:
            StoreUnavailable: the watch did not deliver it before `deadline`.
        """
        if self.revision < revision:
            await self._waiters.wait(revision, deadline, what)

    def _wake(self) -> None:
        self._waiters.wake(self.revision)

    def fail_waiters(self, exc: Exception) -> None:
        self._waiters.fail(exc)

    # -- list ------------------------------------------------------------------

    async def _relist(self, deadline: float) -> None:
        """List the whole prefix at one revision and apply it as a snapshot."""
        entries, revision = await self._list_all(deadline)
        assert self._apply is not None
        self._apply(revision, entries, snapshot=True)
        self.revision = max(self.revision, revision)
        self._stats["relists"] += 1
        self._wake()

    async def _list_all(self, deadline: float) -> tuple[list[Entry], int]:
        keys = self._keys
        start, revision, entries = keys.prefix, 0, []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=keys.prefix_end, revision=revision, limit=PAGE_SIZE
            )
            call = self._session.unary("kv", "Range", request)
            response = await self._session.request("list", call, deadline)
            revision = revision or response.header.revision
            entries += [e for kv in response.kvs if (e := keys.entry(kv)) is not None]
            if not response.more:
                return entries, revision
            start = response.kvs[-1].key + b"\0"

    # -- watch -----------------------------------------------------------------

    async def run(self) -> None:
        """Follow the prefix until cancelled, re-creating the watch whenever it breaks."""
        backoff = BACKOFF_START
        while True:
            endpoint = self._session.current()
            try:
                await self._follow(endpoint)
                backoff = BACKOFF_START
                continue
            except grpc.aio.AioRpcError as exc:
                await self._session.stream_failed("watch", endpoint, exc)
            except _ApplyFailed:
                pass  # logged with its traceback where it happened; the member is fine
            except (StreamEnded, StorageError, asyncio.InvalidStateError) as exc:
                log.warning("etcd watch on %s stopped: %s", endpoint.address, exc)
                self._session.failed(endpoint)
            except Exception:
                log.exception("etcd watch failed unexpectedly; restarting it")
            self.watching = False
            self._stats["watch_restarts"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _follow(self, endpoint: Endpoint) -> None:
        """Watch from the mirror's revision + 1 and apply what comes; return after a re-list.

        Raises:
            grpc.aio.AioRpcError, StreamEnded: the stream broke (retried by the loop).
            _ApplyFailed: apply() raised; the loop follows again from that revision.
        """
        metadata = self._session.metadata(("hasleader", "true"))
        call = endpoint.watch.Watch(metadata=metadata)
        self._watch_call, self._watch_abandoned = (endpoint, call), False
        try:
            create = rpc.WatchCreateRequest(
                key=self._keys.prefix,
                range_end=self._keys.prefix_end,
                start_revision=self.revision + 1,
            )
            await _send(call, rpc.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise StreamEnded("the member closed the watch stream")
                self._session.contact()
                self.watching = True
                self._watch_ready.set()
                if response.compact_revision:
                    await self._compacted(response.compact_revision)
                    return
                if response.canceled:
                    raise StreamEnded(f"watch cancelled: {response.cancel_reason or 'no reason'}")
                if response.events:
                    self._on_events(response.events)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._watch_abandoned or (task is not None and task.cancelling()):
                raise
            raise StreamEnded("the member stopped answering other calls") from None
        finally:
            self._watch_call = None
            call.cancel()

    def _member_failed(self, endpoint: Endpoint) -> None:
        """A call to `endpoint` failed: if the watch is on it, move the watch.

        A member that hangs (stopped process, stalled disk or network) keeps a
        watch stream open but silent; without this the mirror would wait for
        gRPC's keep-alive (15 s) while writes land through other members.
        """
        if self._watch_call is not None and self._watch_call[0] is endpoint:
            self._watch_abandoned = True
            self._watch_call[1].cancel()

    async def _compacted(self, compact_revision: int) -> None:
        log.warning(
            "etcd compacted revision %d past this agent's %d; listing the catalog again",
            compact_revision,
            self.revision,
        )
        await self._relist(self._ctx.deadline())

    # -- apply -----------------------------------------------------------------

    def _on_events(self, events: Iterable[Any]) -> None:
        """Apply events one revision at a time, in order; the mirror's revision
        advances only past revisions that were applied.

        Raises:
            _ApplyFailed: apply() raised for a revision (not yet retried enough).
        """
        entry_of, delete = self._keys.entry, _DELETE
        revision = 0  # the revision being gathered
        fresh = False  # whether it is past the mirror's (not seen on an earlier watch)
        entries: list[Entry] = []
        try:
            for event in events:  # a revision's events are consecutive
                kv = event.kv
                if kv.mod_revision != revision:
                    self._applied(revision, entries)
                    revision, entries = kv.mod_revision, []
                    fresh = revision > self.revision
                if fresh and (entry := entry_of(kv, event.type == delete)):
                    entries.append(entry)
            self._applied(revision, entries)
        finally:
            self._wake()

    def _applied(self, revision: int, entries: list[Entry]) -> None:
        """Apply one revision's entries (none: internal keys only) and move past it."""
        if revision <= self.revision:
            return  # seen already (a watch re-created from an older revision)
        if entries:
            self._apply_revision(revision, entries)
        self.revision = revision

    def _apply_revision(self, revision: int, entries: list[Entry]) -> None:
        assert self._apply is not None
        try:
            self._apply(revision, entries)
            return
        except Exception as exc:
            self._stats["apply_failures"] += 1
            failed_at, count = self._failing
            count = count + 1 if failed_at == revision else 1
            self._failing = (revision, count)
            if count < APPLY_ATTEMPTS:
                log.exception(
                    "applying etcd revision %d to the catalog failed; following again from it",
                    revision,
                )
                raise _ApplyFailed(revision) from exc
        log.exception(
            "applying etcd revision %d failed %d times; applying its %d entries one by one",
            revision,
            APPLY_ATTEMPTS,
            len(entries),
        )
        self._apply_one_by_one(revision, entries)

    def _apply_one_by_one(self, revision: int, entries: list[Entry]) -> None:
        assert self._apply is not None
        skipped: set[str] = set()
        for entry in entries:
            try:
                self._apply(revision, [entry])
            except Exception:
                log.exception(
                    "skipping %s at etcd revision %d: it cannot be applied", entry.key, revision
                )
                skipped.add(entry.key)
        if skipped:
            self._skipped[revision] = skipped
            while len(self._skipped) > _SKIPPED_KEPT:
                del self._skipped[min(self._skipped)]


async def _send(call: Any, request: Any) -> None:
    """`call.write(request)` on a stream, ended by the call's own end.

    grpc.aio's `write()` first waits until the call's initial metadata is
    sent, and a call cancelled before that leaves that wait pending for good
    (grpc 1.85): the mirror cancels the watch of a member that failed other
    calls, and a watch cancelled while it connected never followed again.

    Raises:
        grpc.aio.AioRpcError: the call failed.
        StreamEnded: the call ended (was cancelled) before the request was sent.
    """
    write = asyncio.ensure_future(call.write(request))
    ended = asyncio.ensure_future(call.code())
    try:
        done, _ = await asyncio.wait((write, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        write.cancel()
    if write in done:
        write.result()  # its error, if it failed
        return
    raise StreamEnded(f"the stream ended ({ended.result().name}) before the request was sent")
