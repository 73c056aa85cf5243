"""The etcd group committer's queue on its own (storage/_etcd_batch.py).

The committer is a state machine behind two callables, `send` and `fence`;
these tests give it a `send` that holds every Txn until released (as a
stalled etcd would), so what is queued, expired or cancelled can be seen
without a cluster. The real sends are covered by test_etcd_writes.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from waypost._exceptions import Conflict, OutcomeUnknown, StorageError, StoreBusy, StoreUnavailable
from waypost.storage import Entry
from waypost.storage._etcd_batch import (
    MAX_BYTES,
    MAX_SENDING,
    STALLED,
    Commit,
    GroupCommitter,
    Outcome,
)
from waypost.storage._etcd_txn import MAX_INFLIGHT


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


async def test_two_txns_are_sent_at_once_and_the_rest_wait_to_go_together() -> None:
    """With four slots but two Txns sent at once, commits that arrive while
    both are out wait for an answer and then share one Txn (fewer Txns: less
    CPU in every agent and in etcd), instead of each taking a free slot alone."""
    gated = Gated()
    committer = GroupCommitter(gated.send, gated.fence, max_inflight=4, max_sending=2, overdue=60)
    tasks = {}

    async def submit(*keys: str) -> None:
        for key in keys:
            tasks[key] = asyncio.ensure_future(committer.submit(commit(key)))
        for _ in range(3):
            await asyncio.sleep(0)

    await submit("a", "b", "c", "d")
    assert gated.sent == [["a"], ["b"]]
    assert committer.waiting == 2
    await gated.release("a")
    assert gated.sent[-1] == ["c", "d"]
    await submit("e")
    assert committer.waiting == 1
    await gated.release("b")
    assert gated.sent[-1] == ["e"]
    for key in "ce":
        await gated.release(key)
    assert await asyncio.wait_for(asyncio.gather(*tasks.values()), 5) == [1] * 5
    await committer.close()


async def test_a_merged_txn_carries_at_most_max_bytes_of_keys_and_values() -> None:
    """etcd refuses a request over its --max-request-bytes before proposing it,
    and a refused merged Txn is sent again commit by commit: commits whose
    values would add up past MAX_BYTES go in separate Txns instead, in order,
    and one larger than MAX_BYTES still goes (alone)."""
    gated = Gated()
    committer = GroupCommitter(gated.send, gated.fence, max_inflight=4, max_sending=1, overdue=60)
    loop = asyncio.get_running_loop()
    third = MAX_BYTES // 3
    sizes = {"a": 1, "b": third, "c": third, "d": third, "e": MAX_BYTES + 1, "f": 1}
    tasks = [
        asyncio.ensure_future(
            committer.submit(Commit([Entry(key, b"v" * size)], (), loop.time() + 5))
        )
        for key, size in sizes.items()
    ]
    for _ in range(3):
        await asyncio.sleep(0)
    assert gated.sent == [["a"]]
    for key in "abde":
        await gated.release(key)
    assert gated.sent == [["a"], ["b", "c"], ["d"], ["e"], ["f"]]
    await gated.release("f")
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [1] * len(sizes)
    await committer.close()


async def test_txns_that_carry_several_commits_open_no_spare_slot_when_merely_late() -> None:
    """While a Txn out carries several commits (load, or an agent short of
    CPU) and is late but not stalled (STALLED times overdue), the queue waits
    for an answer: spare slots would only shrink the batches."""
    gated = Gated()
    committer = GroupCommitter(gated.send, gated.fence, max_inflight=4, max_sending=2, overdue=0.2)
    tasks = [asyncio.ensure_future(committer.submit(commit(key))) for key in "abcd"]
    for _ in range(3):
        await asyncio.sleep(0)
    await gated.release("a")
    assert gated.sent == [["a"], ["b"], ["c", "d"]]
    tasks.append(asyncio.ensure_future(committer.submit(commit("e"))))
    await asyncio.sleep(0.5)  # b is long overdue, but c-d is shared
    assert committer.waiting == 1
    assert gated.sent[-1] == ["c", "d"]
    for key in "bce":
        await gated.release(key)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [1] * 5
    await committer.close()


async def test_once_the_txns_out_are_overdue_the_spare_slots_carry_one_commit_each() -> None:
    """While the Txns out carry one commit each, a stalled etcd holds the
    queue's head up by `overdue` at most: then the other slots go, each with
    one commit (the rest stay queued, so they can still fail cleanly as
    never sent)."""
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


async def test_once_etcd_answers_a_spare_the_next_spares_carry_what_is_queued() -> None:
    """One Txn is stuck (a retry on another member) while etcd answers the
    others: after the first one-commit spare is answered, a spare takes the
    whole queue, instead of one commit per Txn for as long as the stuck one
    lasts (the backend sends one Txn at a time: nothing else would go)."""
    gated = Gated()
    committer = GroupCommitter(gated.send, gated.fence, max_inflight=2, max_sending=1, overdue=0.05)
    tasks = [asyncio.ensure_future(committer.submit(commit(key))) for key in "abcdef"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert gated.sent == [["a"]] and committer.waiting == 5  # one sent at once
    for _ in range(500):  # 5 s at most: the first spare, once "a" is overdue
        if len(gated.sent) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert gated.sent == [["a"], ["b"]]  # etcd answered nothing since "a": one commit
    await gated.release("b")
    assert gated.sent[-1] == ["c", "d", "e", "f"]  # it answered "b": the rest together
    for key in "ac":
        await gated.release(key)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [1] * 6
    await committer.close()


class Slow:
    """A `send` that answers every Txn after `latency` seconds (a slow disk,
    a distant member): slower than `overdue`, but never stalled."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.sizes: list[int] = []

    async def send(self, slot: int, batch: list[Commit], deadline: float) -> list[Outcome]:
        self.sizes.append(len(batch))
        await asyncio.sleep(self.latency)
        return [1] * len(batch)

    async def fence(self, slot: int) -> None:
        raise AssertionError("no outcome is unknown here")


async def test_txns_slower_than_overdue_under_steady_load_still_batch() -> None:
    """The spare Txns opened once the first two were late do not count as the
    two sent at once: later commits wait for an answer and go together again,
    instead of one per Txn for as long as every Txn takes longer than `overdue`."""
    slow = Slow(latency=0.05)
    committer = GroupCommitter(slow.send, slow.fence, max_inflight=4, max_sending=2, overdue=0.01)
    tasks = []
    for i in range(150):  # a commit every 2 ms for 0.3 s: six Txn round trips
        tasks.append(asyncio.ensure_future(committer.submit(commit(f"k{i}"))))
        await asyncio.sleep(0.002)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == [1] * 150
    assert sum(slow.sizes) == 150
    assert max(slow.sizes[4:]) >= 5, slow.sizes  # batches again after the spares
    await committer.close()


class Stuck:
    """A `send` that holds each Txn that carries a key of `stuck` until the
    test releases that key, and answers every other Txn at once with
    `answers[key]` for each commit (revision 1 by default)."""

    def __init__(self, *stuck: str, answers: dict[str, Outcome] | None = None) -> None:
        self.gates = {key: asyncio.Event() for key in stuck}
        self.answers = answers or {}
        self.sent: list[list[str]] = []

    async def send(self, slot: int, batch: list[Commit], deadline: float) -> list[Outcome]:
        keys = [op.key for c in batch for op in c.ops]
        self.sent.append(keys)
        for key in keys:
            if key in self.gates:
                await self.gates[key].wait()
        return [self.answers.get(c.ops[0].key, 1) for c in batch]

    async def fence(self, slot: int) -> None:
        raise AssertionError("no outcome is unknown here")


async def settled(tasks: list[asyncio.Future[int]], seconds: float = 5) -> list[object]:
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), seconds)


async def abc_behind_p(
    stuck: Stuck, overdue: float
) -> tuple[GroupCommitter, list[asyncio.Future[Any]]]:
    """One Txn at a time: "p" goes alone; "a", "b", "c", queued behind it,
    go together once it is answered (and stay out while `stuck` holds "a")."""
    committer = GroupCommitter(
        stuck.send, stuck.fence, max_inflight=4, max_sending=1, overdue=overdue
    )
    first = asyncio.ensure_future(committer.submit(commit("p")))
    await asyncio.sleep(0)
    batched = [asyncio.ensure_future(committer.submit(commit(k))) for k in "abc"]
    await asyncio.sleep(0)
    stuck.gates["p"].set()
    assert await settled([first]) == [1]
    return committer, batched


async def test_a_stalled_txn_of_several_commits_does_not_hold_every_other_write() -> None:
    """The backend's one Txn at a time carries three commits and stalls (sent
    again commit by commit, a lease renewal): once it is STALLED times overdue
    the spares go with one commit each, as for a stalled single-commit Txn,
    and once etcd applied one, the rest go together; the stalled Txn's own
    commits still wait for their answer."""
    stuck = Stuck("p", "a")
    overdue = 0.02
    committer, stalled = await abc_behind_p(stuck, overdue)  # a, b and c stall
    started = time.monotonic()
    others = [asyncio.ensure_future(committer.submit(commit(k))) for k in "defgh"]
    assert await settled(others) == [1] * 5  # within 5 s: not at the stalled Txn's answer
    assert time.monotonic() - started >= overdue * STALLED * 0.9  # not merely late
    assert stuck.sent == [["p"], ["a", "b", "c"], ["d"], ["e"], ["f"], ["g", "h"]]
    assert not any(task.done() for task in stalled)
    stuck.gates["a"].set()
    assert await settled(stalled) == [1] * 3
    await committer.close()


async def spares_after_a_stall(answers: dict[str, Outcome]) -> list[list[str]]:
    """Answer "x" (its outcome from `answers`), stall "a", then queue b-h: the
    Txns sent, once "a" is overdue (three spare slots)."""
    stuck = Stuck("a", answers=answers)
    committer = GroupCommitter(stuck.send, stuck.fence, max_inflight=4, max_sending=1, overdue=0.02)
    assert await settled([asyncio.ensure_future(committer.submit(commit("x")))]) == [1]
    head = asyncio.ensure_future(committer.submit(commit("a")))
    await asyncio.sleep(0)
    await settled([asyncio.ensure_future(committer.submit(commit(k))) for k in "bcdefgh"])
    stuck.gates["a"].set()
    await settled([head])
    await committer.close()
    return stuck.sent


async def test_an_answer_from_before_the_stall_does_not_open_the_spares_wide() -> None:
    """etcd applied "x" before "a" went out and stalled: that says nothing about
    the stall, so the spares carry one commit each; only "b", applied after
    "a" was sent, lets the next spare take the rest."""
    sent = await spares_after_a_stall({})
    assert sent == [["x"], ["a"], ["b"], ["c"], ["d"], ["e", "f", "g", "h"]]


async def test_only_an_applied_answer_opens_the_spares_wide() -> None:
    """A spare that etcd refused (a Conflict, an error) says nothing of whether
    etcd applies Txns: the next spares still carry one commit each."""
    refused: dict[str, Outcome] = {
        "b": Conflict("b changed"),
        "c": StorageError("etcd refused the write"),
        "d": Conflict("d changed"),
        "e": StorageError("etcd refused the write"),
    }
    sent = await spares_after_a_stall(refused)
    assert sent == [["x"], ["a"], ["b"], ["c"], ["d"], ["e"], ["f"], ["g"], ["h"]]


async def test_the_backend_sends_one_txn_at_once() -> None:
    """The production setting (MAX_SENDING, MAX_INFLIGHT): while one Txn is
    out and not overdue, every other commit waits for its answer and they
    share the next Txn (two at once made 6 to 8 commits per Txn, one 11 to
    13: docs/benchmarks.md)."""
    gated = Gated()
    committer = GroupCommitter(
        gated.send, gated.fence, max_inflight=MAX_INFLIGHT, max_sending=MAX_SENDING
    )
    tasks = [asyncio.ensure_future(committer.submit(commit("a")))]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(committer.submit(commit(k))) for k in "bcd"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert gated.sent == [["a"]] and committer.waiting == 3
    await gated.release("a")
    assert gated.sent == [["a"], ["b", "c", "d"]]
    await gated.release("b")
    assert await settled(tasks) == [1] * 4
    await committer.close()


async def test_a_single_commit_stall_after_a_batched_one_opens_a_spare_at_its_own_due() -> None:
    """The timer armed for a batched Txn's later due (STALLED x overdue) is
    moved up when the next Txn out carries one commit and stalls: its spare
    goes `overdue` after it, not when the batched Txn's timer would fire."""
    stuck = Stuck("p", "a", "d")
    overdue = 0.1
    committer, batched = await abc_behind_p(stuck, overdue)
    # a-b-c are out; once the timer armed for "p" has fired, the one armed
    # now is for a-b-c's due, 0.7 s after they went
    await asyncio.sleep(overdue * 1.5)
    stalled = asyncio.ensure_future(committer.submit(commit("d")))
    await asyncio.sleep(0)
    assert stuck.sent[-1] == ["a", "b", "c"] and committer.waiting == 1
    stuck.gates["a"].set()
    assert await settled(batched) == [1] * 3  # answered: "d" goes, and stalls
    assert stuck.sent[-1] == ["d"]
    sent_d = asyncio.get_running_loop().time()
    later = asyncio.ensure_future(committer.submit(commit("e")))
    await asyncio.sleep(0)
    # The look at the queue is due `overdue` after "d" went, not at a-b-c's due
    # (read off the timer, not the wall clock: a loaded machine moves the latter).
    timer = committer._overdue_timer
    assert timer is not None and timer.when() <= sent_d + overdue, "waited for a-b-c's timer"
    assert await settled([later]) == [1]
    stuck.gates["d"].set()
    assert await settled([stalled]) == [1]
    await committer.close()


class Fenced(Stuck):
    """A `Stuck` whose fence holds until the test releases it."""

    def __init__(self, *stuck: str, answers: dict[str, Outcome] | None = None) -> None:
        super().__init__(*stuck, answers=answers)
        self.fencing, self.release = asyncio.Event(), asyncio.Event()

    async def fence(self, slot: int) -> None:
        self.fencing.set()
        await self.release.wait()


async def test_commits_queued_behind_a_txn_being_fenced_go_out_meanwhile() -> None:
    """A Txn whose outcome is unknown keeps its slot while it is fenced, not
    the right to send: a commit queued behind it goes out on another slot."""
    stuck = Fenced("u", answers={"u": OutcomeUnknown("no answer")})
    committer = GroupCommitter(stuck.send, stuck.fence, max_inflight=2, max_sending=1, overdue=60)
    lost = asyncio.ensure_future(committer.submit(commit("u")))
    await asyncio.sleep(0)
    queued = asyncio.ensure_future(committer.submit(commit("v")))
    await asyncio.sleep(0)
    assert stuck.sent == [["u"]]  # one Txn at a time: "v" waits behind it
    stuck.gates["u"].set()
    assert isinstance((await settled([lost]))[0], OutcomeUnknown)
    assert await settled([queued]) == [1]
    assert stuck.fencing.is_set() and not stuck.release.is_set()  # still fencing "u"'s slot
    stuck.release.set()
    await committer.close()


async def test_a_spare_still_out_does_not_count_as_the_txn_sent_at_once() -> None:
    """The head "a" stalls, a spare goes with "b" and stalls too; "a" is answered. With
    "b" (a spare) the only Txn out, the next commit goes at once as the one
    Txn sent at once, not as a spare once "b" is overdue: counted, a spare
    would hold every later commit to its own due."""
    stuck = Stuck("a", "b", "c")
    committer = GroupCommitter(stuck.send, stuck.fence, max_inflight=4, max_sending=1, overdue=0.05)
    head = asyncio.ensure_future(committer.submit(commit("a")))
    await asyncio.sleep(0)
    spare = asyncio.ensure_future(committer.submit(commit("b")))
    for _ in range(500):  # 5 s at most: the spare goes once "a" is overdue
        if len(stuck.sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert stuck.sent == [["a"], ["b"]]
    stuck.gates["a"].set()
    assert await settled([head]) == [1]
    after = asyncio.ensure_future(committer.submit(commit("c")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert stuck.sent[-1] == ["c"], "waited for the spare's due"
    assert [spare for _, _, spare in committer._sending.values()] == [True, False]
    stuck.gates["b"].set()
    stuck.gates["c"].set()
    assert await settled([spare, after]) == [1, 1]
    await committer.close()
