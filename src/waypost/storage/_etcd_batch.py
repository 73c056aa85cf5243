"""Group commit for the etcd backend: concurrent commits share one Txn.

Under load, registrations arrive faster than etcd round trips complete. The
batcher keeps up to `max_inflight` Txns in flight; commits that arrive while
all of them are busy wait in a queue, and the next free slot sends every
waiting commit (up to `max_ops` operations, never two commits that touch the
same key) as one Txn. Each batched commit is still all-or-nothing (the Txn is),
and all of them get the Txn's revision as their index. At low load a commit
goes out alone at once, so batching adds no latency.

If etcd refuses a merged Txn for a reason that is not "unreachable" (too
large, too many ops), each commit is retried alone, so one bad batch never
fails the innocent commits that were merged with it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .._exceptions import StorageError, StoreUnavailable
from .base import Entry

Send = Callable[[list[Entry], float], Awaitable[int]]


class _Pending:
    __slots__ = ("deadline", "future", "keys", "ops")

    def __init__(self, ops: list[Entry], deadline: float, future: asyncio.Future[int]) -> None:
        self.ops = ops
        self.keys = {op.key for op in ops}
        self.deadline = deadline
        self.future = future


class GroupCommitter:
    def __init__(self, send: Send, max_inflight: int = 4, max_ops: int = 100) -> None:
        self._send = send
        self._max_inflight = max_inflight
        self._max_ops = max_ops
        self._queue: deque[_Pending] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.txns = 0

    async def submit(self, ops: list[Entry], deadline: float) -> int:
        """Commit `ops` (alone or with others) and return the revision.

        Raises:
            StoreUnavailable, StorageError: as the Txn that carried `ops` failed.
        """
        if len(ops) >= self._max_ops:
            self.txns += 1
            return await self._send(ops, deadline)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(ops, deadline, future))
        self._kick()
        return await future

    async def close(self) -> None:
        """Fail what is queued and stop the Txns in flight."""
        while self._queue:
            _settle(self._queue.popleft(), StorageError("the etcd store was closed"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _kick(self) -> None:
        while self._queue and len(self._tasks) < self._max_inflight:
            task = asyncio.get_running_loop().create_task(self._flush(self._take()))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._kick()

    def _take(self) -> list[_Pending]:
        """The longest prefix of the queue that fits one Txn without a repeated key."""
        batch = [self._queue.popleft()]
        count, keys = len(batch[0].ops), set(batch[0].keys)
        while self._queue:
            nxt = self._queue[0]
            if count + len(nxt.ops) > self._max_ops or not keys.isdisjoint(nxt.keys):
                break
            batch.append(self._queue.popleft())
            count += len(nxt.ops)
            keys |= nxt.keys
        return batch

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            ops = [op for pending in batch for op in pending.ops]
            self.txns += 1
            revision = await self._send(ops, min(p.deadline for p in batch))
        except StoreUnavailable as exc:
            for pending in batch:
                _settle(pending, exc)
        except StorageError as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
            else:
                await asyncio.gather(*(self._alone(p) for p in batch))
        else:
            for pending in batch:
                _settle(pending, revision)
        finally:
            for pending in batch:
                _settle(pending, StorageError("the etcd store was closed"))

    async def _alone(self, pending: _Pending) -> None:
        try:
            self.txns += 1
            _settle(pending, await self._send(pending.ops, pending.deadline))
        except StorageError as exc:
            _settle(pending, exc)


def _settle(pending: _Pending, outcome: int | BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
