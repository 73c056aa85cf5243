"""How commits wait for the etcd mirror to apply their revision
(storage/_etcd_mirror.py's `_Waiters`), on their own: released in revision
order by `wake()`, failed at their own deadline by one shared timer. The
mirror itself (list, watch, apply) is tested against the real cluster in
test_etcd.py and test_etcd_writes.py."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from waypost._exceptions import StorageError, StoreUnavailable
from waypost.storage._etcd_mirror import _Waiters


def waiters(applied: int = 0) -> tuple[_Waiters, Any]:
    mirror = SimpleNamespace(revision=applied)
    ctx = SimpleNamespace(loop=asyncio.get_running_loop())
    return _Waiters(mirror, ctx), mirror  # type: ignore[arg-type]


def later(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_waiters_are_released_once_their_revision_is_applied_and_not_before() -> None:
    queue, _ = waiters()
    tasks = {rev: asyncio.ensure_future(queue.wait(rev, later(5), "write")) for rev in (3, 5, 9)}
    await asyncio.sleep(0)
    queue.wake(5)
    await asyncio.wait_for(asyncio.gather(tasks[3], tasks[5]), 1)
    assert not tasks[9].done()
    queue.wake(9)
    await asyncio.wait_for(tasks[9], 1)


async def test_each_waiter_fails_at_its_own_deadline_whatever_the_order_they_came_in() -> None:
    queue, mirror = waiters(applied=4)
    started = time.monotonic()
    slow = asyncio.ensure_future(queue.wait(10, later(0.6), "write"))
    fast = asyncio.ensure_future(queue.wait(11, later(0.2), "consistent read"))  # earlier
    served = asyncio.ensure_future(queue.wait(6, later(0.2), "write"))
    await asyncio.sleep(0)
    queue.wake(6)
    await asyncio.wait_for(served, 1)
    with pytest.raises(StoreUnavailable, match=r"consistent read reached etcd \(revision 11\)"):
        await asyncio.wait_for(fast, 5)
    assert time.monotonic() - started > 0.15  # not before its deadline
    assert not slow.done()  # and on its own timer, not the later one's
    mirror.revision = 7
    with pytest.raises(StoreUnavailable, match=r"has not delivered it yet \(at 7\)"):
        await asyncio.wait_for(slow, 5)
    assert time.monotonic() - started > 0.55
    queue.wake(11)  # late: nothing left to release, nothing raises


async def test_a_caller_that_gives_up_is_dropped_and_close_fails_the_rest() -> None:
    queue, _ = waiters()
    gone = asyncio.ensure_future(queue.wait(3, later(0.1), "write"))
    left = asyncio.ensure_future(queue.wait(4, later(0.3), "write"))
    kept = asyncio.ensure_future(queue.wait(5, later(5), "write"))
    await asyncio.sleep(0)
    gone.cancel()
    # the timer fires at the cancelled one's deadline first, and must go on to the next
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(left, 5)
    assert gone.cancelled() and not kept.done()
    queue.fail(StorageError("the etcd store was closed"))
    with pytest.raises(StorageError, match="closed"):
        await asyncio.wait_for(kept, 1)
