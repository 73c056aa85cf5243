"""`etcd://h1:2379,h2:2379,h3:2379`: many agents sharing one catalog in etcd.

Design
------
Keys. Every catalog key `k` lives at `<prefix>k` (default prefix `/waypost/`),
the msgpack value as is. Two kinds of internal keys live next to them and are
never shown to the catalog: `<prefix>_rev`, rewritten by every commit (so
every commit, even one that only deletes absent keys, makes a revision whose
events this agent will see, and `confirm()` learns the revision of the last
commit by any agent), and the slot keys `<prefix>_txn/<agent>/<slot>` below.

Index. The etcd revision is the catalog index: a commit is one etcd Txn and
returns the revision in the Txn's response header; entries carry their keys'
create_revision / mod_revision. Every agent therefore reports the same
X-Consul-Index for the same state. Under load, concurrent commits share a Txn
(group commit, see _etcd_batch.py) and then share its revision.

Conditions. Each Condition is a Txn compare on mod_revision: the exact form
`mod_revision(key) == index` (etcd compares an absent key as revision 0), the
range form `mod_revision < index + 1` over [key, range_end), which etcd holds
for every key in the range and, for an empty range, against revision 0 (so it
holds). Ranges skip the internal keys. When a compare fails, the failure
branch reads what each compare looked at, so a merged Txn knows which of its
commits conflicted (those get Conflict, the others are sent again), and it
rewrites `_rev`: the failed Txn thus has a revision under the prefix, and
Conflict is raised only once the mirror has applied it, so the caller's
re-read sees the change that conflicted.

Idempotent writes. A Txn whose answer is lost (timeout, connection cut after
the request went out, "request timed out") may or may not have been applied,
and sending it again blindly could apply it twice, after another agent's
acknowledged write, undoing it. So every Txn also carries a nonce: the group
committer sends at most one Txn per slot (4 slots), each slot owns the key
`<prefix>_txn/<agent>/<slot>` (on the agent's lease, so it vanishes with the
agent), and each Txn compares that key with the nonce of the slot's last
Txn and writes a fresh one. A retry of the same Txn then either applies once
or fails the compare and finds its own nonce in the failure branch's read:
it was applied, at that key's mod_revision, and that is the answer. Only
reads (Range, Status) are retried without such a guard. When the deadline
passes with no answer the commit fails with OutcomeUnknown; a commit that
cannot have reached etcd (every member refused the connection, no leader,
still queued) fails with StoreUnavailable, and etcd's own refusal with
StorageError. After OutcomeUnknown the slot keeps the commit's keys blocked
and sends empty Txns on it ("fences") until one succeeds: from then on the
lost Txn can never apply (its compare names the old nonce), or the fence
found that it did. A later commit to the same keys cannot overtake it.

Mirror. The catalog never reads etcd. `open()` lists the prefix at one
revision R (paged, all pages at R) and hands it over as a snapshot, then one
watch on the prefix, started at R+1, feeds every later change, the agent's
own included, to `apply()` in revision order, one call per revision.
`commit()` returns only after the watch has applied the commit's revision,
so an acknowledged write is readable here (and everything before it). The
mirror's revision advances only after `apply()` returned; if it raises, the
error is logged with its traceback and the watch starts again from that
revision (with backoff). If the same revision fails three times its entries
are applied one at a time and the ones that still fail are skipped (logged),
so one bad entry cannot stop the mirror or fail the commits merged with it;
the commit that wrote it gets a StorageError saying so.
If the watch breaks (member killed, no leader) it is re-created on another
member from the last applied revision + 1, so nothing is skipped or repeated;
so is a watch on a member that other calls find failing (a hung member keeps
its stream open but silent).
If that revision was compacted meanwhile, the agent lists again and applies
a snapshot: keys deleted in the gap disappear, nothing is lost.

Lease. Open grants one lease (TTL `lease_ttl`, default 10s) and a background
stream keeps it alive every TTL/3. Entries marked `ephemeral` (the `l/<node>`
liveness key that drives each node's serfHealth check) are put with it, and
the backend remembers them. If etcd reports the lease gone (it expired while
this agent could not reach etcd), a new lease is granted and the remembered
keys are put again by a commit through the queue (ordered after any queued
write to them), retried with backoff until it succeeds or the store closes,
so the node turns passing again everywhere. `close()` revokes the lease: a
stopped agent's node turns critical at once; a killed one's after the TTL.

Failure. A monitor asks a member for its status every second. While no member
answers with a known leader, `health()` says `known_leader=False` and
`last_contact_ms` grows; reads go on from the mirror. A commit is tried until
its deadline (`timeout`, default 5s, counted from when it is queued) across
members, riding out a leader election, but fails at once with
StoreUnavailable when every member refuses connections; at most 10,000
commits wait, more fail at once with StoreBusy. `confirm()` is a quorum read.
When etcd comes back, the watch resumes from its revision, the keep-alive
resumes (or re-grants), and the monitor flips health back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from typing import Any, Final

import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from .._exceptions import Conflict, OutcomeUnknown, StorageError, StoreUnavailable
from ._etcd_batch import Commit, GroupCommitter, Outcome
from ._etcd_config import EtcdConfig, parse_url
from ._etcd_session import Endpoint, LeaseNotFound, Session, describe
from .base import ApplyFn, Condition, Entry, Storage, StoreHealth

log = logging.getLogger("waypost.storage.etcd")

META_KEY: Final = "_rev"
SLOT_DIR: Final = "_txn/"
PAGE_SIZE: Final = 2000
PROBE_INTERVAL: Final = 1.0
PROBE_TIMEOUT: Final = 1.0
CLOSE_TIMEOUT: Final = 2.0
MAX_INFLIGHT: Final = 4
APPLY_ATTEMPTS: Final = 3  # tries of one revision before its entries are applied one by one
_SKIPPED_KEPT: Final = 1000  # revisions whose skipped entries are remembered
_BACKOFF_START: Final = 0.1
_BACKOFF_MAX: Final = 1.0
_REPUT_BACKOFF_MAX: Final = 2.0
_SLOT_MOVES: Final = 3  # a slot key found changed more often than this is an error


class _StreamEnded(Exception):
    """A watch or keep-alive stream ended or was cancelled by the member."""


class _ApplyFailed(Exception):
    """`apply()` raised for a revision; the watch starts again from it."""


class _Conflicted(Exception):
    """A commit's condition failed in the Txn that got `revision`."""

    def __init__(self, revision: int, message: str) -> None:
        super().__init__(message)
        self.revision = revision
        self.message = message


class _Slot:
    """One in-flight Txn's idempotency key and the nonce etcd holds in it."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.nonce: bytes | None = None  # what etcd holds now (None: the key is absent)
        self._counter = itertools.count(1)

    def fresh(self) -> bytes:
        return b"%d" % next(self._counter)


class _Span:
    """One compare of a condition, over [key, range_end) or one key."""

    __slots__ = ("condition", "end", "start")

    def __init__(self, condition: Condition, start: bytes, end: bytes) -> None:
        self.condition = condition
        self.start = start
        self.end = end  # b"" for the exact form

    def compare(self) -> rpc.Compare:
        if not self.end:
            return rpc.Compare(
                key=self.start,
                target=rpc.Compare.MOD,
                result=rpc.Compare.EQUAL,
                mod_revision=self.condition.index,
            )
        return rpc.Compare(
            key=self.start,
            range_end=self.end,
            target=rpc.Compare.MOD,
            result=rpc.Compare.LESS,
            mod_revision=self.condition.index + 1,
        )

    def read(self) -> rpc.RequestOp:
        """The failure-branch read that tells whether this compare held."""
        if not self.end:
            request = rpc.RangeRequest(key=self.start, keys_only=True)
        else:
            request = rpc.RangeRequest(
                key=self.start,
                range_end=self.end,
                limit=1,
                sort_order=rpc.RangeRequest.DESCEND,
                sort_target=rpc.RangeRequest.MOD,
                keys_only=True,
            )
        return rpc.RequestOp(request_range=request)

    def failure(self, response: Any) -> str | None:
        """Why this compare failed, judged from its read, or None if it held."""
        kvs = response.response_range.kvs
        seen = kvs[0].mod_revision if kvs else 0
        condition = self.condition
        if not self.end:
            if seen == condition.index:
                return None
            return (
                f"{condition.key} changed since it was read: its modify index is {seen}, "
                f"the write expected {condition.index}"
            )
        if seen <= condition.index:
            return None
        return (
            f"keys in [{condition.key}, {condition.range_end}) changed after index "
            f"{condition.index} (at {seen})"
        )


class _Attempt:
    """What one Txn did: applied at `revision`, or refused by the listed failures."""

    __slots__ = ("applied", "failures", "revision")

    def __init__(self, revision: int, applied: bool, failures: list[str | None]) -> None:
        self.revision = revision
        self.applied = applied
        self.failures = failures  # per commit: why a condition failed, or None


class EtcdStorage(Storage):
    """The etcd backend: writes through etcd, reads from a watch-fed mirror."""

    shared = True

    def __init__(self, url: str) -> None:
        self.config: EtcdConfig = parse_url(url)
        self._session = Session(self.config)
        self._prefix = self.config.prefix.encode()
        self._prefix_end = _range_end(self._prefix)
        self._internal = (
            (self._prefix + META_KEY.encode(), self._prefix + META_KEY.encode() + b"\0"),
            (self._prefix + SLOT_DIR.encode(), _range_end(self._prefix + SLOT_DIR.encode())),
        )
        self._apply: ApplyFn | None = None
        self._revision = 0  # last revision applied to the mirror
        self._failing: tuple[int, int] = (0, 0)  # (revision, failures) of apply()
        self._skipped: dict[int, set[str]] = {}  # revision -> keys apply() could not take
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._lease_id = 0
        self._lease_lock = asyncio.Lock()
        self._reput_lease = 0  # the lease the remembered ephemeral keys were last put with
        self._reput_task: asyncio.Task[None] | None = None
        self._ephemeral: dict[str, bytes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        agent = uuid.uuid4().hex[:16]
        slot_dir = self._prefix + f"{SLOT_DIR}{agent}/".encode()
        self._slots = [_Slot(slot_dir + b"%d" % i) for i in range(MAX_INFLIGHT)]
        self._batcher = GroupCommitter(self._send, self._fence, max_inflight=MAX_INFLIGHT)
        self._healthy = False  # a member with a leader answered the last probe
        self._watching = False  # the watch stream is established
        self._watch_ready = asyncio.Event()
        self._watch_call: tuple[Endpoint, Any] | None = None  # the live watch stream
        self._watch_abandoned = False
        self._session.on_failed.append(self._member_failed)
        self._closed = False
        self._stats = dict.fromkeys(
            (
                "commits",
                "conflicts",
                "outcome_unknown",
                "relists",
                "watch_restarts",
                "apply_failures",
                "lease_grants",
                "liveness_reputs",
                "keepalive_restarts",
                "fences",
            ),
            0,
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
        self._reput_lease = self._lease_id
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
        if self._closed or self._apply is None:
            raise StorageError("the etcd store is not open")
        deadline = self._deadline()
        ops = list({op.key: op for op in ops}.values())  # etcd rejects a key twice in one Txn
        compares = sum(len(self._spans(c)) for c in conditions)
        try:
            revision = await self._batcher.submit(
                Commit(ops, conditions, deadline, compares=compares)
            )
        except _Conflicted as conflict:
            self._stats["conflicts"] += 1
            await self._caught_up(
                conflict.revision, deadline + self.config.timeout, "conflicting change"
            )
            raise Conflict(conflict.message) from None
        except OutcomeUnknown:
            self._stats["outcome_unknown"] += 1
            raise
        self._stats["commits"] += 1
        await self._caught_up(revision, deadline + self.config.timeout, "write")
        skipped = self._skipped.get(revision)
        if skipped and any(op.key in skipped for op in ops):
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
            "queued": self._batcher.waiting,
            "busy": self._batcher.busy,
            "known_leader": float(self._healthy),
        }

    # -- writes ------------------------------------------------------------

    async def _send(self, slot_no: int, batch: list[Commit], deadline: float) -> list[Outcome]:
        """Write one (possibly merged) batch on a slot; the batcher calls this.

        Commits whose conditions failed get _Conflicted, the others are sent
        again without them; if etcd refuses a merged batch (too large, too
        many ops), each commit is sent alone, so one bad commit never fails
        the innocent ones merged with it.
        """
        slot = self._slots[slot_no]
        outcomes: dict[int, Outcome] = {}
        pending = list(range(len(batch)))
        while pending:
            commits = [batch[i] for i in pending]
            try:
                attempt = await self._attempt(slot, commits, deadline)
            except StoreUnavailable as exc:
                self._healthy = False
                outcomes.update(dict.fromkeys(pending, exc))
                break
            except StorageError as exc:
                if len(pending) == 1:
                    outcomes[pending[0]] = exc
                else:
                    for i in pending:
                        (outcomes[i],) = await self._send(slot_no, [batch[i]], deadline)
                break
            if attempt.applied:
                outcomes.update(dict.fromkeys(pending, attempt.revision))
                break
            conflicted = [i for i, why in zip(pending, attempt.failures, strict=True) if why]
            if not conflicted:  # cannot happen: the compares and the reads saw one state
                error = StorageError("etcd refused a compare that every read says holds")
                outcomes.update(dict.fromkeys(pending, error))
                break
            for i, why in zip(pending, attempt.failures, strict=True):
                if why:
                    outcomes[i] = _Conflicted(attempt.revision, why)
            pending = [i for i in pending if i not in conflicted]
        for i, commit in enumerate(batch):
            if isinstance(outcomes[i], int | OutcomeUnknown):
                self._remember(commit.ops)  # what the caller meant, for lease re-puts
        return [outcomes[i] for i in range(len(batch))]

    async def _attempt(self, slot: _Slot, commits: list[Commit], deadline: float) -> _Attempt:
        """Send one Txn for `commits` on `slot` until etcd answers it or the deadline passes.

        Raises:
            OutcomeUnknown, StoreUnavailable, StorageError: see Session.write.
        """
        nonce = slot.fresh()
        lease_tries = moves = 0
        while True:
            lease = self._lease_id
            request, spans = self._txn_request(slot, nonce, commits, lease)
            call = self._session.unary("kv", "Txn", request)
            try:
                response = await self._session.write("write", call, deadline)
            except LeaseNotFound as exc:
                await self._renew_lease(deadline, lost=lease)
                lease_tries += 1
                if exc.maybe_applied:
                    raise OutcomeUnknown(
                        "a write got no answer from etcd, and its retry "
                        "found this agent's lease expired; it may have been applied before"
                    ) from None
                if lease_tries >= 2:
                    raise StorageError(
                        "etcd keeps refusing this agent's lease; the write was not made"
                    ) from None
                continue
            if response.succeeded:
                slot.nonce = nonce
                revision: int = response.header.revision
                return _Attempt(revision, True, [])
            held = response.responses[0].response_range.kvs
            current = held[0].value if held else None
            if current == nonce:  # an earlier try of this very Txn was applied
                slot.nonce = nonce
                applied_at: int = held[0].mod_revision
                return _Attempt(applied_at, True, [])
            if current != slot.nonce:
                # The slot key moved: a Txn whose outcome was unknown was applied
                # after all, or the lease that held the key expired. Nothing of
                # this Txn was applied; send it again against what etcd holds.
                log.info(
                    "etcd slot %s held %r, not %r: an earlier write with an unknown outcome "
                    "was applied, or the lease expired",
                    slot.key.decode(errors="replace"),
                    current,
                    slot.nonce,
                )
                slot.nonce = current
                moves += 1
                if moves > _SLOT_MOVES:
                    raise StorageError(
                        f"etcd slot key {slot.key!r} keeps changing under this agent"
                    )
                continue
            reads = iter(response.responses[1:])  # one per span, in order: consume them all
            failures = []
            for commit_spans in spans:
                reasons = [span.failure(next(reads)) for span in commit_spans]
                failures.append(next((why for why in reasons if why), None))
            return _Attempt(response.header.revision, False, failures)

    def _txn_request(
        self, slot: _Slot, nonce: bytes, commits: Iterable[Commit], lease: int
    ) -> tuple[rpc.TxnRequest, list[list[_Span]]]:
        """The Txn: compare the slot's nonce and every condition; on success write the
        ops, `_rev` and the new nonce; on failure read the slot and every compared key,
        and write `_rev` (so the failure has a revision the mirror will see)."""
        if slot.nonce is None:
            guard = rpc.Compare(
                key=slot.key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
            )
        else:
            guard = rpc.Compare(
                key=slot.key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=slot.nonce
            )
        compare = [guard]
        success: list[rpc.RequestOp] = []
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=slot.key))]
        spans: list[list[_Span]] = []
        for commit in commits:
            commit_spans = [s for c in commit.conditions for s in self._spans(c)]
            spans.append(commit_spans)
            compare += [s.compare() for s in commit_spans]
            failure += [s.read() for s in commit_spans]
            success += [self._request_op(op, lease) for op in commit.ops]
        meta = rpc.RequestOp(
            request_put=rpc.PutRequest(key=self._prefix + META_KEY.encode(), value=b"")
        )
        mark = rpc.RequestOp(request_put=rpc.PutRequest(key=slot.key, value=nonce, lease=lease))
        success += [meta, mark]
        failure.append(meta)
        return rpc.TxnRequest(compare=compare, success=success, failure=failure), spans

    def _spans(self, condition: Condition) -> list[_Span]:
        """A condition's compares: one for a key, one per piece of a range that
        remains once the internal keys (and anything outside the prefix) are cut out."""
        start = self._prefix + condition.key.encode()
        if not condition.range_end:
            return [_Span(condition, start, b"")]
        end = min(self._prefix + condition.range_end.encode(), self._prefix_end)
        pieces = [(start, end)]
        for cut_start, cut_end in self._internal:
            pieces = [
                piece
                for a, b in pieces
                for piece in ((a, min(b, cut_start)), (max(a, cut_end), b))
                if piece[0] < piece[1]
            ]
        return [_Span(condition, a, b) for a, b in pieces]

    def _request_op(self, op: Entry, lease: int) -> rpc.RequestOp:
        key = self._prefix + op.key.encode()
        if op.value is None:
            return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
        put = rpc.PutRequest(key=key, value=op.value, lease=lease if op.ephemeral else 0)
        return rpc.RequestOp(request_put=put)

    async def _fence(self, slot_no: int) -> None:
        """Settle a slot whose last Txn's outcome is unknown: write a fresh nonce on it.

        Once that succeeds the lost Txn can never be applied (it compares the old
        nonce), or the fence found that it was. Until then the batcher keeps the
        lost commits' keys blocked. Tried with backoff while the store is open.
        """
        slot = self._slots[slot_no]
        backoff = _BACKOFF_START
        while not self._closed:
            self._stats["fences"] += 1
            try:
                await self._attempt(slot, [], self._deadline())
                return
            except StorageError as exc:
                log.warning(
                    "etcd: could not settle a write with an unknown outcome yet (%s); "
                    "writes to its keys wait",
                    exc,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

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
            StoreUnavailable: the watch did not deliver it before `deadline`.
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
        self._apply(revision, entries, snapshot=True)
        self._revision = max(self._revision, revision)
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
        if key == META_KEY or key.startswith(SLOT_DIR):
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
            except _ApplyFailed:
                pass  # logged with its traceback where it happened; the member is fine
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
            _ApplyFailed: apply() raised; the loop follows again from that revision.
        """
        metadata = self._session.metadata(("hasleader", "true"))
        call = endpoint.watch.Watch(metadata=metadata)
        self._watch_call, self._watch_abandoned = (endpoint, call), False
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
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._watch_abandoned or (task is not None and task.cancelling()):
                raise
            raise _StreamEnded("the member stopped answering other calls") from None
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
            self._revision,
        )
        await self._relist(self._deadline())

    def _on_events(self, events: Iterable[Any]) -> None:
        """Apply events one revision at a time, in order; the mirror's revision
        advances only past revisions that were applied.

        Raises:
            _ApplyFailed: apply() raised for a revision (not yet retried enough).
        """
        try:
            for revision, group in itertools.groupby(events, key=lambda e: e.kv.mod_revision):
                if revision <= self._revision:
                    continue
                entries = [
                    entry
                    for event in group
                    if (entry := self._entry(event.kv, deleted=event.type == rpc.Event.DELETE))
                ]
                if entries:
                    self._apply_revision(revision, entries)
                self._revision = revision
        finally:
            self._wake()

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

    # -- lease -------------------------------------------------------------

    async def _grant_lease(self, deadline: float) -> None:
        # A grant retried after a lost answer may leave an unused lease behind;
        # it holds no key and expires after its TTL.
        request = rpc.LeaseGrantRequest(TTL=self.config.lease_ttl)
        call = self._session.unary("lease", "LeaseGrant", request)
        response = await self._session.request("lease grant", call, deadline)
        self._lease_id = response.ID
        self._stats["lease_grants"] += 1

    async def _renew_lease(self, deadline: float, lost: int) -> None:
        """Replace an expired lease and start putting the keys that hung on it again."""
        async with self._lease_lock:
            if self._lease_id != lost:
                return  # another task already replaced it
            log.warning("etcd lease %x expired; granting a new one", lost)
            await self._grant_lease(deadline)
        if self._reput_task is None or self._reput_task.done():
            self._reput_task = self._spawn(self._reput_loop())

    async def _reput_loop(self) -> None:
        """Put the remembered ephemeral keys with the current lease, until that succeeds.

        The re-put is a commit through the queue, so it lands after any write to
        those keys queued before it; its ops are taken when it is sent, so a key
        deleted meanwhile is not brought back.
        """
        backoff = _BACKOFF_START
        while not self._closed and self._reput_lease != self._lease_id:
            lease = self._lease_id
            keys = list(self._ephemeral)
            if not keys:
                self._reput_lease = lease
                return

            def current(keys: list[str] = keys) -> list[Entry]:
                held = self._ephemeral
                return [Entry(k, held[k], ephemeral=True) for k in keys if k in held]

            commit = Commit(current(), (), self._deadline(), refresh=current)
            try:
                await self._batcher.submit(commit)
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
            if self._lease_id == lease:
                self._reput_lease = lease

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_report_crash)
        self._tasks.append(task)
        return task


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
