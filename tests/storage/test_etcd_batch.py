"""The etcd group committer's queue on its own (storage/_etcd_batch.py).

The committer is a state machine behind two callables, `send` and `fence`;
these tests give it a `send` that holds every Txn until released (as a
stalled etcd would), so what is queued, expired or cancelled can be seen
without a cluster. The real sends are covered by test_etcd_writes.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from waypost._exceptions import OutcomeUnknown, StoreBusy, StoreUnavailable
from waypost.storage import Entry
from waypost.storage._etcd_batch import Commit, GroupCommitter, Outcome


class Held:
    """A `send` that answers every Txn with revision 1, once released."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.sent: list[list[str]] = []

    async def send(self, slot: int, batch: list[Commit], deadline: float) -> list[Outcome]:
        self.sent.append([op.key for c in batch for op in c.ops])
        await self.released.wait()
        return [1] * len(batch)

    async def fence(self, slot: int) -> None:
        raise AssertionError("no outcome is unknown here")


def commit(key: str, timeout: float = 5.0) -> Commit:
    deadline = asyncio.get_running_loop().time() + timeout
    return Commit([Entry(key, b"v")], (), deadline)


async def test_a_caller_that_gives_up_frees_its_place_in_the_queue_at_once() -> None:
    held = Held()
    committer = GroupCommitter(held.send, held.fence, max_inflight=1, max_queued=3)
    first = asyncio.ensure_future(committer.submit(commit("a")))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(committer.submit(commit(k))) for k in ("b", "c", "d")]
    await asyncio.sleep(0)
    assert committer.waiting == 3
    with pytest.raises(StoreBusy):
        await committer.submit(commit("e"))
    queued[1].cancel()
    await asyncio.sleep(0)
    assert committer.waiting == 2  # not only once a Txn is filled or the deadline passes
    late = asyncio.ensure_future(committer.submit(commit("f")))
    await asyncio.sleep(0)
    held.released.set()
    assert await asyncio.wait_for(asyncio.gather(first, queued[0], queued[2], late), 5)
    assert "c" not in {key for keys in held.sent for key in keys}  # never sent
    assert committer.waiting == 0
    await committer.close()


async def test_every_queued_commit_expires_at_its_own_deadline_whatever_the_order() -> None:
    """Commits queued behind a stalled Txn fail with StoreUnavailable at their
    deadline, never sent: many with the same deadline, and one whose deadline
    is earlier than those queued before it."""
    held = Held()
    committer = GroupCommitter(held.send, held.fence, max_inflight=1)
    stalled = asyncio.ensure_future(committer.submit(commit("a", 0.1)))  # sent: it stays
    await asyncio.sleep(0)
    started = time.monotonic()
    many = [asyncio.ensure_future(committer.submit(commit(f"k{i}", 0.6))) for i in range(500)]
    early = asyncio.ensure_future(committer.submit(commit("early", 0.2)))
    with pytest.raises(StoreUnavailable, match="without being sent") as info:
        await asyncio.wait_for(early, 5)
    assert not isinstance(info.value, OutcomeUnknown)
    assert time.monotonic() - started > 0.15  # not before its deadline
    assert not any(task.done() for task in many)  # and before theirs (no wall-clock bound:
    # the machine is shared)
    results = await asyncio.wait_for(asyncio.gather(*many, return_exceptions=True), 5)
    assert time.monotonic() - started > 0.55
    assert all(isinstance(r, StoreUnavailable) for r in results), {type(r) for r in results}
    assert committer.waiting == 0
    held.released.set()
    assert await asyncio.wait_for(stalled, 5) == 1
    assert held.sent == [["a"]]
    await committer.close()


async def test_at_most_max_sending_txns_go_at_once_and_the_rest_wait_to_go_together() -> None:
    """With four slots but two Txns sent at once, commits that arrive while
    both are out wait and then share one Txn (fewer Txns: less CPU in every
    agent and in etcd), instead of each taking a free slot alone."""
    held = Held()
    committer = GroupCommitter(held.send, held.fence, max_inflight=4, max_sending=2, overdue=60)
    tasks = []
    for key in ("a", "b", "c", "d", "e"):
        tasks.append(asyncio.ensure_future(committer.submit(commit(key))))
        await asyncio.sleep(0)
    assert held.sent == [["a"], ["b"]]
    assert committer.waiting == 3
    held.released.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [1] * 5
    assert held.sent == [["a"], ["b"], ["c", "d", "e"]]
    await committer.close()


class Lost(Held):
    """The first Txn's outcome is unknown, and its fence hangs until released."""

    def __init__(self) -> None:
        super().__init__()
        self.fenced = asyncio.Event()

    async def send(self, slot: int, batch: list[Commit], deadline: float) -> list[Outcome]:
        if not self.sent:
            self.sent.append([op.key for c in batch for op in c.ops])
            return [OutcomeUnknown("lost")] * len(batch)
        return await super().send(slot, batch, deadline)

    async def fence(self, slot: int) -> None:
        await self.fenced.wait()


async def test_a_slot_being_fenced_does_not_count_as_sending() -> None:
    """A Txn whose outcome is unknown keeps its slot while it is fenced, but
    two other Txns may still be sent meanwhile (on the slots left)."""
    lost = Lost()
    committer = GroupCommitter(lost.send, lost.fence, max_inflight=4, max_sending=2, overdue=60)
    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(committer.submit(commit("a")), 5)
    tasks = []
    for key in ("b", "c", "d"):
        tasks.append(asyncio.ensure_future(committer.submit(commit(key))))
        await asyncio.sleep(0)
    assert lost.sent == [["a"], ["b"], ["c"]]  # "a" is still being fenced
    lost.released.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [1] * 3
    lost.fenced.set()
    await committer.close()


async def test_once_the_txns_out_are_overdue_the_spare_slots_carry_one_commit_each() -> None:
    """A stalled etcd holds the queue's head up by `overdue` at most: then the
    other slots go, each with one commit (the rest stay queued, so they can
    still fail cleanly as never sent)."""
    held = Held()
    committer = GroupCommitter(held.send, held.fence, max_inflight=4, max_sending=2, overdue=0.05)
    started = time.monotonic()
    tasks = [asyncio.ensure_future(committer.submit(commit(key))) for key in "abcde"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert held.sent == [["a"], ["b"]]
    for _ in range(500):  # 5 s at most
        if len(held.sent) == 4:
            break
        await asyncio.sleep(0.01)
    assert time.monotonic() - started >= 0.045  # not before the two were overdue
    assert held.sent == [["a"], ["b"], ["c"], ["d"]]
    assert committer.waiting == 1  # "e": every slot is taken
    held.released.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [1] * 5
    await committer.close()
