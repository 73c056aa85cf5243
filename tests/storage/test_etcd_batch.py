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


class Gated:
    """A `send` that holds each Txn until the test releases the one of a key."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def send(self, slot: int, batch: list[Commit], deadline: float) -> list[Outcome]:
        keys = [op.key for c in batch for op in c.ops]
        self.sent.append(keys)
        gate = self.gates.setdefault(keys[0], asyncio.Event())
        await gate.wait()
        return [1] * len(batch)

    async def fence(self, slot: int) -> None:
        raise AssertionError("no outcome is unknown here")

    async def release(self, key: str) -> None:
        self.gates.setdefault(key, asyncio.Event()).set()
        for _ in range(5):  # the answer, the settling, the kick that follows
            await asyncio.sleep(0)


async def test_spare_slots_go_only_while_no_txn_out_is_shared() -> None:
    """Up to four single-commit Txns go at once (no latency added at low load);
    once commits share a Txn, no more than two are sent and the rest wait to
    go together (fewer Txns: less CPU in every agent and in etcd)."""
    gated = Gated()
    committer = GroupCommitter(gated.send, gated.fence, max_inflight=4, max_sending=2)
    tasks = {}

    async def submit(*keys: str) -> None:
        for key in keys:
            tasks[key] = asyncio.ensure_future(committer.submit(commit(key)))
        for _ in range(3):
            await asyncio.sleep(0)

    for key in "abcd":
        await submit(key)
    assert gated.sent == [["a"], ["b"], ["c"], ["d"]]  # every slot: all out are single
    await submit("e", "f", "g")
    assert committer.waiting == 3  # no slot left
    await gated.release("a")
    assert gated.sent[-1] == ["e", "f", "g"]  # three out, all single: the spare slot goes
    await gated.release("b")
    await submit("h")
    assert gated.sent[-1] == ["e", "f", "g"]  # c, d and the shared e-f-g out: h waits
    assert committer.waiting == 1
    await gated.release("c")
    assert committer.waiting == 1  # still two out (d, e-f-g)
    await gated.release("d")
    assert gated.sent[-1] == ["h"]
    for key in "eh":
        await gated.release(key)
    assert await asyncio.wait_for(asyncio.gather(*tasks.values()), 5) == [1] * 8
    await committer.close()
