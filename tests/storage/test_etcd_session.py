"""Session.write's reading of etcd's errors (storage/_etcd_session.py).

Which error a failed attempt gets decides whether a write that may have been
applied is sent again as if it had not been, so these drive `write()` with a
call that raises the errors a real etcd sends: a fake of the gRPC call, made
of grpc's own AioRpcError with etcd's codes and texts (etcd's rpctypes:
"etcdserver: too many requests" is RESOURCE_EXHAUSTED). A real etcd cannot be
made to answer "too many requests" on demand (its apply must lag its commit by
5000 entries). No channel is opened: the call never touches its endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest

from waypost._exceptions import OutcomeUnknown, StorageError, StoreUnavailable
from waypost.storage._etcd_config import parse_url
from waypost.storage._etcd_session import Endpoint, Session

Code = grpc.StatusCode
TOO_MANY = (Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
LOST = (Code.DEADLINE_EXCEEDED, "Deadline Exceeded")


def error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class Etcd:
    """Answers attempt i with `script[i]`: an error, or "ok" (the response)."""

    def __init__(self, *script: tuple[grpc.StatusCode, str] | str) -> None:
        self.script = list(script)
        self.attempts = 0

    async def call(self, endpoint: Endpoint, timeout: float) -> Any:
        step = self.script[min(self.attempts, len(self.script) - 1)]
        self.attempts += 1
        if step == "ok":
            return "response"
        assert not isinstance(step, str)
        raise error(*step)


async def write(etcd: Etcd, timeout: float = 2.0) -> Any:
    session = Session(parse_url("etcd://127.0.0.1:2"))
    try:
        return await session.write("write", etcd.call, session.loop.time() + timeout)
    finally:
        await session.close()


async def test_too_many_requests_after_a_lost_answer_is_retried_not_reported_unapplied() -> None:
    """The first attempt may have been applied (its answer was lost); etcd then
    refuses the retry with "too many requests", from before the proposal. The
    write must go on to etcd's answer, not end with StorageError ("nothing was
    applied"), after which the Txn layer sends the commits again as new."""
    etcd = Etcd(LOST, TOO_MANY, "ok")
    assert await asyncio.wait_for(write(etcd), 10) == "response"
    assert etcd.attempts == 3


async def test_too_many_requests_alone_is_waited_out_and_never_counts_as_sent() -> None:
    """A write that etcd only ever refused as busy cannot have been applied:
    at the deadline it is StoreUnavailable (not made), not OutcomeUnknown."""
    etcd = Etcd(TOO_MANY)
    with pytest.raises(StoreUnavailable) as info:
        await asyncio.wait_for(write(etcd, timeout=0.3), 10)
    assert not isinstance(info.value, OutcomeUnknown)
    assert etcd.attempts >= 3  # retried with backoff until the deadline


@pytest.mark.parametrize(
    "refusal,unknown",
    [
        ((Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"), False),
        ((Code.INVALID_ARGUMENT, "etcdserver: request is too large"), False),
        ((Code.RESOURCE_EXHAUSTED, "grpc: received message larger than max (9 vs. 4)"), False),
        ((Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"), True),
    ],
    ids=["too-many-ops", "too-large", "grpc-size", "space-exceeded"],
)
async def test_a_refusal_after_a_lost_answer_is_unapplied_only_if_every_copy_was_refused(
    refusal: tuple[grpc.StatusCode, str], unknown: bool
) -> None:
    """A refusal of the request's bytes refused the lost copy too (the same
    bytes): nothing was applied, StorageError. "Space exceeded" depends on the
    state: the lost copy may have gone in before the quota filled."""
    etcd = Etcd(LOST, refusal)
    with pytest.raises(StorageError) as info:
        await asyncio.wait_for(write(etcd), 10)
    assert isinstance(info.value, OutcomeUnknown) is unknown, info.value
    assert etcd.attempts == 2


async def test_a_read_or_lease_grant_refused_as_busy_is_retried() -> None:
    """request() (reads, lease grants: a grant goes through raft too) waits
    out "too many requests" instead of failing with StorageError."""
    etcd = Etcd(TOO_MANY, TOO_MANY, "ok")
    session = Session(parse_url("etcd://127.0.0.1:2"))
    try:
        result = await session.request("lease grant", etcd.call, session.loop.time() + 2)
    finally:
        await session.close()
    assert result == "response" and etcd.attempts == 3


@pytest.mark.parametrize(
    "answer,unknown",
    [((Code.UNAVAILABLE, "etcdserver: no leader"), False), (LOST, True)],
    ids=["no-leader", "answer-lost"],
)
async def test_at_the_deadline_only_a_write_that_may_have_been_applied_is_unknown(
    answer: tuple[grpc.StatusCode, str], unknown: bool
) -> None:
    """etcd's "no leader" comes before the proposal: a write that only got it
    was not made (StoreUnavailable), while a lost answer may have been applied
    (OutcomeUnknown), though both are UNAVAILABLE-class errors retried alike."""
    etcd = Etcd(answer)
    with pytest.raises(StoreUnavailable) as info:
        await asyncio.wait_for(write(etcd, timeout=0.3), 10)
    assert isinstance(info.value, OutcomeUnknown) is unknown, info.value
    assert etcd.attempts >= 2
