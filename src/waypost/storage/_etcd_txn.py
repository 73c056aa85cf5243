"""The etcd backend's write path: one Txn per batch, conditions as compares,
idempotent retries through per-slot nonces, fences after an unknown outcome.

Conditions. Each Condition is a Txn compare on mod_revision: the exact form
`mod_revision(key) == index` (etcd compares an absent key as revision 0), the
range form `mod_revision < index + 1` over [key, range_end), which etcd holds
for every key in the range and, for an empty range, against revision 0 (so it
holds). Ranges skip the internal keys. A refused Txn's failure branch only
reads the slot key (see below) and rewrites `_rev`: the failed Txn thus has a
revision R under the prefix, and Conflict is raised only once the mirror has
applied R, so the caller's re-read sees the change that conflicted. Which
commits of a merged Txn conflicted is then judged by a read-only Txn that
reads what each compare looked at *as of R* (etcd keeps every revision until
compaction), so it sees exactly the state the compares saw; those commits get
Conflict, the others are sent again. Reading only when a compare failed keeps
those reads out of every Txn (their bytes were proposed through raft and
written to every member's log, for nothing, on every commit). Should R be
compacted before the reads run, the refused commits are simply sent again:
their conditions are evaluated anew, atomically, by the next Txn.

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
reads (Range, Status, the read-only Txn above) are retried without such a
guard. When the deadline passes with no answer the commit fails with
OutcomeUnknown; a commit that cannot have reached etcd (every member refused
the connection, no leader, still queued) fails with StoreUnavailable, and
etcd's own refusal with StorageError. After OutcomeUnknown the slot keeps the
commit's keys blocked and sends empty Txns on it ("fences") until one
succeeds: from then on the lost Txn can never apply (its compare names the old
nonce), or the fence found that it did. A later commit to the same keys
cannot overtake it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final

import grpc  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from .._exceptions import OutcomeUnknown, StorageError, StoreUnavailable
from ._etcd_batch import Commit, Outcome
from ._etcd_common import BACKOFF_MAX, BACKOFF_START, Context
from ._etcd_lease import Lease
from ._etcd_session import LeaseNotFound
from .base import Condition

log = logging.getLogger("waypost.storage.etcd")

MAX_INFLIGHT: Final = 4
# the Compare enums, looked up once (the Txn is built for every commit)
_MOD: Final = rpc.Compare.MOD
_VALUE: Final = rpc.Compare.VALUE
_VERSION: Final = rpc.Compare.VERSION
_EQUAL: Final = rpc.Compare.EQUAL
_LESS: Final = rpc.Compare.LESS
_SLOT_MOVES: Final = 3  # a slot key found changed more often than this is an error
_REJUDGES: Final = 3  # refused Txns whose revision was compacted before they were judged
_MAYBE_WRITTEN: Final = (int, OutcomeUnknown)  # outcomes after which a commit's ops may be in etcd


class Conflicted(Exception):
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

    def add_guard(self, compares: Any) -> None:
        """Add to `compares` (a Txn's repeated field) the compare that holds only
        while etcd still has this slot's last nonce."""
        if self.nonce is None:
            compares.add(key=self.key, target=_VERSION, result=_EQUAL, version=0)
        else:
            compares.add(key=self.key, target=_VALUE, result=_EQUAL, value=self.nonce)


class _Span:
    """One compare of a condition, over [key, range_end) or one key."""

    __slots__ = ("condition", "end", "start")

    def __init__(self, condition: Condition, start: bytes, end: bytes) -> None:
        self.condition = condition
        self.start = start
        self.end = end  # b"" for the exact form

    def add_compare(self, compares: Any) -> None:
        """Add this span's compare to `compares` (a Txn's repeated field)."""
        if not self.end:
            compares.add(
                key=self.start, target=_MOD, result=_EQUAL, mod_revision=self.condition.index
            )
        else:
            compares.add(
                key=self.start,
                range_end=self.end,
                target=_MOD,
                result=_LESS,
                mod_revision=self.condition.index + 1,
            )

    def read(self, revision: int) -> rpc.RequestOp:
        """The read, as of `revision`, that tells whether this compare held there."""
        if not self.end:
            request = rpc.RangeRequest(key=self.start, revision=revision, keys_only=True)
        else:
            request = rpc.RangeRequest(
                key=self.start,
                range_end=self.end,
                revision=revision,
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
    """What one Txn did: applied at `revision`, or refused by the listed failures
    (None: refused, but what its compares saw was compacted before it was judged)."""

    __slots__ = ("applied", "failures", "revision")

    def __init__(self, revision: int, applied: bool, failures: list[str | None] | None) -> None:
        self.revision = revision
        self.applied = applied
        self.failures = failures  # per commit: why a condition failed, or None


class Writer:
    """Sends the group committer's batches as Txns, one slot per Txn in flight."""

    def __init__(self, ctx: Context, lease: Lease) -> None:
        self._ctx = ctx
        self._session = ctx.session
        self._keys = ctx.keys
        self._lease = lease
        agent = uuid.uuid4().hex[:16]
        self._slots = [_Slot(ctx.keys.slot(agent, i)) for i in range(MAX_INFLIGHT)]

    def spans(self, conditions: Iterable[Condition]) -> list[_Span]:
        """The compares `conditions` add to a Txn (made once per commit)."""
        return [span for c in conditions for span in self._spans(c)]

    async def send(self, slot_no: int, batch: list[Commit], deadline: float) -> list[Outcome]:
        """Write one (possibly merged) batch on a slot; the batcher calls this.

        Commits whose conditions failed get Conflicted, the others are sent
        again without them; if etcd refuses a merged batch (too large, too
        many ops), each commit is sent alone, so one bad commit never fails
        the innocent ones merged with it.
        """
        outcomes: dict[int, Outcome] = {}
        pending = list(range(len(batch)))
        rejudges = 0
        while pending:
            attempt = await self._send_pending(slot_no, batch, pending, deadline, outcomes)
            if attempt is None or attempt.applied:
                break
            if attempt.failures is None:  # compacted before it was judged: send it again
                rejudges += 1
                if rejudges > _REJUDGES:
                    error = StorageError(
                        "etcd compacts its history faster than a write's "
                        "conditions can be checked; it was not made"
                    )
                    outcomes.update(dict.fromkeys(pending, error))
                    break
                continue
            pending = self._conflicts(pending, attempt, outcomes)
        results = [outcomes[i] for i in range(len(batch))]
        # what the callers meant, for lease re-puts
        self._lease.remember(
            [
                c
                for c, outcome in zip(batch, results, strict=True)
                if isinstance(outcome, _MAYBE_WRITTEN)
            ]
        )
        return results

    async def _send_pending(
        self,
        slot_no: int,
        batch: list[Commit],
        pending: list[int],
        deadline: float,
        outcomes: dict[int, Outcome],
    ) -> _Attempt | None:
        """One Txn for the pending commits of `batch`. Applied, it settles them
        all; refused, it is returned for judging; an error settles them all too
        (None), each sent alone first if etcd refused them together."""
        try:
            attempt = await self._attempt(
                self._slots[slot_no], [batch[i] for i in pending], deadline
            )
        except StoreUnavailable as exc:
            self._ctx.healthy = False
            outcomes.update(dict.fromkeys(pending, exc))
            return None
        except StorageError as exc:
            if len(pending) == 1:
                outcomes[pending[0]] = exc
            else:
                for i in pending:
                    (outcomes[i],) = await self.send(slot_no, [batch[i]], deadline)
            return None
        if attempt.applied:
            outcomes.update(dict.fromkeys(pending, attempt.revision))
        return attempt

    @staticmethod
    def _conflicts(
        pending: list[int], attempt: _Attempt, outcomes: dict[int, Outcome]
    ) -> list[int]:
        """Give the commits whose condition failed their Conflicted; return the others."""
        assert attempt.failures is not None
        judged = list(zip(pending, attempt.failures, strict=True))
        if not any(why for _, why in judged):  # cannot happen: the compares and reads saw one state
            error = StorageError("etcd refused a compare that every read says holds")
            outcomes.update(dict.fromkeys(pending, error))
            return []
        for i, why in judged:
            if why:
                outcomes[i] = Conflicted(attempt.revision, why)
        return [i for i, why in judged if not why]

    async def fence(self, slot_no: int) -> None:
        """Settle a slot whose last Txn's outcome is unknown: write a fresh nonce on it.

        Once that succeeds the lost Txn can never be applied (it compares the old
        nonce), or the fence found that it was. Until then the batcher keeps the
        lost commits' keys blocked. Tried with backoff while the store is open.
        """
        slot = self._slots[slot_no]
        backoff = BACKOFF_START
        while not self._ctx.closed:
            self._ctx.stats["fences"] += 1
            try:
                await self._attempt(slot, [], self._ctx.deadline())
                return
            except StorageError as exc:
                log.warning(
                    "etcd: could not settle a write with an unknown outcome yet (%s); "
                    "writes to its keys wait",
                    exc,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _attempt(self, slot: _Slot, commits: list[Commit], deadline: float) -> _Attempt:
        """Send one Txn for `commits` on `slot` until etcd answers it or the deadline passes.

        Raises:
            OutcomeUnknown, StoreUnavailable, StorageError: see Session.write.
        """
        nonce = slot.fresh()
        lease_tries = moves = 0
        while True:
            lease = self._lease.id
            request = self._txn_request(slot, nonce, commits, lease)
            call = self._session.unary("kv", "Txn", request)
            try:
                response = await self._session.write("write", call, deadline)
            except LeaseNotFound as exc:
                await self._lease.renew(deadline, lost=lease)
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
            refused_at: int = response.header.revision
            return _Attempt(refused_at, False, await self._judge(commits, refused_at, deadline))

    async def _judge(
        self, commits: Sequence[Commit], revision: int, deadline: float
    ) -> list[str | None] | None:
        """Why each commit's conditions failed in the Txn refused at `revision`
        (None for a commit whose conditions held), read as of that revision;
        None if etcd compacted it meanwhile.

        Raises:
            StoreUnavailable, StorageError: the reads could not be made.
        """
        spans = [span for commit in commits for span in commit.spans]
        if not spans:
            return [None] * len(commits)
        request = rpc.TxnRequest(success=[span.read(revision) for span in spans])
        call = self._session.unary("kv", "Txn", request)
        try:
            response = await self._session.request("conflict check", call, deadline)
        except StorageError as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, grpc.aio.AioRpcError)
                and cause.code() == grpc.StatusCode.OUT_OF_RANGE
            ):
                return None  # "required revision has been compacted"
            raise
        reads = iter(response.responses)  # one per span, in order: consume them all
        failures: list[str | None] = []
        for commit in commits:
            reasons = [span.failure(next(reads)) for span in commit.spans]
            failures.append(next((why for why in reasons if why), None))
        return failures

    def _txn_request(
        self, slot: _Slot, nonce: bytes, commits: Iterable[Commit], lease: int
    ) -> rpc.TxnRequest:
        """The Txn: compare the slot's nonce and every condition; on success write the
        ops, `_rev` and the new nonce; on failure read the slot and write `_rev` (so
        the failure has a revision the mirror will see)."""
        # Built in place: a message passed to a constructor is copied into
        # its parent (upb's MergeFrom), so building the ops first and the
        # TxnRequest from them made every op twice; this is 2.5x cheaper
        # (16 against 40 µs for a Txn of 7 registrations).
        request = rpc.TxnRequest()
        compares = request.compare
        slot.add_guard(compares)
        for commit in commits:
            for span in commit.spans:
                span.add_compare(compares)
        add = request.success.add
        of = self._keys.of
        for commit in commits:
            for op in commit.ops:
                if op.value is None:
                    add().request_delete_range.key = of(op.key)
                    continue
                put = add().request_put
                put.key, put.value = of(op.key), op.value
                if op.ephemeral:
                    put.lease = lease
        add().request_put.key = self._keys.meta
        mark = add().request_put
        mark.key, mark.value, mark.lease = slot.key, nonce, lease
        failure = request.failure
        failure.add().request_range.key = slot.key
        failure.add().request_put.key = self._keys.meta
        return request

    def _spans(self, condition: Condition) -> list[_Span]:
        """A condition's compares: one for a key, one per piece of a range that
        remains once the internal keys (and anything outside the prefix) are cut out."""
        start = self._keys.of(condition.key)
        if not condition.range_end:
            return [_Span(condition, start, b"")]
        pieces = self._keys.cut(start, self._keys.of(condition.range_end))
        return [_Span(condition, a, b) for a, b in pieces]
