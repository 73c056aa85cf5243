"""`sqlite:///path/catalog.db`: the embedded durable store.

Design: one writer thread owns the connection. Commits from the event loop go
into a queue; the writer takes everything waiting (up to `MAX_BATCH` commits),
writes it in one transaction and fsyncs once (WAL, synchronous=FULL). That is
group commit: fifty concurrent registrations cost one fsync, not fifty, and
each still gets its own index. Only after the transaction is on disk does the
writer hand the batch back to the loop (one wake-up per batch), where the
catalog applies it and the callers are answered, in index order. A store
serves the one event loop that opened it, the catalog's.

Conditions are checked by the writer, inside the batch's transaction, just
before each commit's own writes: so they see the stored state including every
earlier commit of the batch, in commit order, and nothing can change between
check and write (this agent is the only writer: see the lock below). Each is
one lookup on the primary key (exact form) or one range scan of it that stops
at the first newer key (range form), a few microseconds against the fsync
that the batch shares; a commit whose one exact condition is on the key it
puts is checked by that write's own statement (`_sqlite_conditions.py`). A
commit whose condition fails writes nothing and gets no index; the rest of
the batch goes on. Its Conflict travels back to the loop
in the same ordered stream as the batch's applies, so it reaches the caller
only after every earlier commit has been applied. A batch of nothing but
conflicts writes nothing and costs no fsync.

Supervision: the writer thread is the only way to the disk, so nothing may
kill it. Any exception while writing a batch rolls the transaction back; the
batch's commits are then written one by one, so only the commit that fails
gets the StorageError (a full disk, or sqlite's write lock held by another
process past BUSY_TIMEOUT, fails them all at once: each would fail alike);
the writer goes on with the next batch. A full disk says so. An error from
COMMIT itself (say a failed fsync) is different: the WAL frames may already be
on disk, and a restart would replay them, so those callers get OutcomeUnknown,
and the batch's indexes are skipped so they can never name two different
writes. If the catalog's `apply` raises on a durable write, the error is
logged with its traceback and that caller gets a StorageError saying the write
is stored but the catalog missed it (restart the agent to reload); later
commits go on.

Bounded queue and deadlines: a stuck or slow disk must not turn into unbounded
memory and callers that wait forever. At most `MAX_QUEUED` commits wait; one
more fails at once with StoreBusy. Every commit has a deadline,
`COMMIT_TIMEOUT` seconds from being queued. A commit still queued at its
deadline is never written (the writer skips it) and fails with
StoreUnavailable: a definite "not written", safe to retry. A commit the writer
already took (say it is stuck in fsync on a hung disk) may still land, so its
caller gets OutcomeUnknown; if it does land it is still applied to the catalog,
so the catalog never misses a stored write. Deadlines are watched on the loop
by one timer for the oldest unanswered commit (a timer per commit cost about a
tenth of group commit's rate), and the writer checks a commit's deadline again
when it takes it, in case the loop is too busy to fire that timer in time.

Checkpoints: never inside a COMMIT. The writer's connection has sqlite's
auto-checkpoint off; a second connection on its own thread copies the WAL
into the db file (see _sqlite_checkpoint: why, and how the WAL stays bounded).

Lock: two agents on one file would each see only their own writes and hand
out the same indexes, so `open()` takes an exclusive lock on `<path>.lock`
(see waypost._lockfile; a second agent is told the pid holding it, and the
kernel drops it if the holder dies) and `close()` drops it. A close() whose
writer or checkpointer is stuck in the kernel raises StorageError and keeps
the store open, with its lock: no thread of it may outlive it beside a
reopened store (the checkpointer's descriptor of the db file, closed then,
would drop the new connections' locks: see _sqlite_checkpoint).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .._exceptions import (
    ConfigError,
    OutcomeUnknown,
    StorageError,
    StoreBusy,
    StoreUnavailable,
)
from .._lockfile import LockFile
from ._sqlite_checkpoint import WAL_KEEP_BYTES, Checkpointer, Durations
from ._sqlite_conditions import UPSERT, blob, fusable, put_all_if, put_if, violated
from .base import ApplyFn, Condition, Entry, Storage

log = logging.getLogger("waypost.storage")

#: Most commits written in one transaction.
MAX_BATCH = 512
#: Most commits waiting for the writer; one more fails at once with StoreBusy.
MAX_QUEUED = 10_000
#: Rows read and applied per call while replaying the store at start-up.
REPLAY_CHUNK = 10_000
#: Seconds a commit may take from being queued to being answered.
COMMIT_TIMEOUT = 10.0
#: Seconds the writer waits for sqlite's write lock. Nothing in this process
#: contends for it (the checkpoints are PASSIVE, the hold is a lock of ours):
#: only another process can hold it, an sqlite3 shell writing to the store.
BUSY_TIMEOUT = 5.0

# True in a child forked from this process: its thread ids and its loops'
# running state are copies of the parent's, so SqliteStorage._inside asks
# asyncio (which knows the process changed) instead of trusting them.
_forked = False


def _after_fork() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_index INTEGER NOT NULL,
    modify_index INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_SET_INDEX = (
    "INSERT INTO meta (name, value) VALUES ('index', ?) "
    "ON CONFLICT(name) DO UPDATE SET value = excluded.value"
)

# A commit's state, changed only under the queue's lock: the writer takes a
# queued commit, or its deadline expires it; whichever comes first decides.
_QUEUED, _TAKEN, _EXPIRED = 0, 1, 2


class _Pending:
    __slots__ = ("conditions", "deadline", "future", "loop", "ops", "state", "timeout")

    def __init__(
        self,
        ops: list[Entry],
        conditions: Sequence[Condition],
        loop: asyncio.AbstractEventLoop,
        timeout: float,
    ) -> None:
        self.ops = ops
        self.conditions = conditions
        self.loop = loop
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.state = _QUEUED
        self.future: asyncio.Future[int] = loop.create_future()


def path_from_url(url: str) -> Path:
    """`sqlite:///var/lib/x.db` -> /var/lib/x.db; `sqlite://rel.db` -> rel.db."""
    rest = url.removeprefix("sqlite://")
    if not rest or rest == "/":
        raise ConfigError(f"store URL {url!r} names no file: use sqlite:///path/to/catalog.db")
    return Path(rest)


class SqliteStorage(Storage):
    def __init__(self, url: str) -> None:
        self.path = path_from_url(url)
        self._lockfile = LockFile(Path(f"{self.path}.lock"), f"the sqlite store {self.path}")
        self._lock = threading.Lock()  # guards the five below (taken bare on the hot path)
        self._wakeup = threading.Condition(self._lock)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._waiting = 0  # commits in _queue still _QUEUED (expired ones linger)
        self._closing = False
        self._writer_idle = False  # waiting on _wakeup: only then is a notify needed
        self._thread: threading.Thread | None = None
        self._apply: ApplyFn | None = None
        self._index = 0  # the writer's, once it runs
        self._commits = 0
        self._transactions = 0
        self._conflicts = 0
        self._failed_batches = 0
        # Deadlines, on the loop that opened the store: its unanswered commits
        # in queue order (so in deadline order) and one timer for the oldest.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0  # threading.get_ident() of the thread running _loop
        self._outstanding: collections.deque[_Pending] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._writer_exited = False
        self._closer: asyncio.Task[None] | None = None  # the close under way
        self._checkpointer = Checkpointer(self.path)
        self._commit_took = Durations()  # each COMMIT: the WAL append and its fsync

    async def open(self, apply: ApplyFn) -> None:
        if self._thread is not None:
            raise StorageError(
                f"the sqlite store {self.path} is already open (or its close did not "
                "finish: a thread of it is stuck, or the close was cancelled)"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot open the sqlite store at {self.path}: {exc}") from exc
        self._lockfile.acquire()
        conn: sqlite3.Connection | None = None
        try:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None
                )
                conn.executescript(_SCHEMA)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                # Checkpoints run on the checkpointer's thread, never in a COMMIT.
                conn.execute("PRAGMA wal_autocheckpoint=0")
                conn.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
                row = conn.execute("SELECT value FROM meta WHERE name = 'index'").fetchone()
                self._index = row[0] if row else 0
                self._replay(conn, apply)
                self._checkpointer.start()
            except (sqlite3.Error, OSError) as exc:
                raise ConfigError(f"cannot open the sqlite store at {self.path}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            self._lockfile.release()
            raise
        self._apply = apply
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._outstanding.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._writer_exited = False
        with self._wakeup:
            self._queue.clear()
            self._waiting = 0
            self._closing = False
        writer = threading.Thread(
            target=self._writer, args=(conn,), name="waypost-sqlite-writer", daemon=True
        )
        try:
            writer.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            self._checkpointer.stop(COMMIT_TIMEOUT)
            conn.close()
            self._lockfile.release()
            raise StorageError(f"cannot open the sqlite store {self.path}: {exc}") from exc
        self._thread = writer

    def _replay(self, conn: sqlite3.Connection, apply: ApplyFn) -> None:
        """Apply every stored row, `REPLAY_CHUNK` rows per call, all at the
        store's index (base.py, 6). In chunks, so that only one chunk of rows
        and entries is alive at a time: reading a million instances' rows at
        once held about 2 GB of tuples beside the records built from them, and
        the process kept that memory after the replay. At least one call, even
        for an empty store: the index must survive a restart of a store whose
        last commits only deleted keys."""
        cursor = conn.execute("SELECT key, value, create_index, modify_index FROM kv")
        applied = False
        while rows := cursor.fetchmany(REPLAY_CHUNK):
            apply(self._index, [Entry(k, v, c, m) for k, v, c, m in rows])
            applied = True
        if not applied:
            apply(self._index, [])

    def _inside(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether the caller runs inside `loop`, the opener's. The common
        case is answered without `asyncio.get_running_loop()`, whose fork
        check is a getpid() system call per call on Python 3.11: a running
        loop runs on one thread, so on the thread where `loop` last committed,
        with `loop` running, the caller is inside it. Anything else (a loop
        moved to another thread, a forked child, whose thread ids and loop
        states are copies) is asked the full question."""
        if threading.get_ident() == self._loop_thread and loop.is_running() and not _forked:
            return True
        try:
            inside = asyncio.get_running_loop() is loop
        except RuntimeError:  # no loop running in this thread (of this process)
            return False
        if inside:
            self._loop_thread = threading.get_ident()
        return inside

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        loop = self._loop
        if loop is None:
            raise StorageError(f"the sqlite store {self.path} is closed")
        pending = _Pending(ops, tuple(conditions), loop, COMMIT_TIMEOUT)
        with self._lock:
            if self._thread is None or self._closing:
                raise StorageError(f"the sqlite store {self.path} is closed")
            if not self._inside(loop):  # apply() must run where the catalog lives
                raise StorageError(f"the sqlite store {self.path} was opened on another event loop")
            if self._writer_exited:  # cannot happen; if it does, say so at once
                raise StorageError(f"the sqlite store {self.path} has no writer: restart the agent")
            if self._waiting >= MAX_QUEUED:
                raise StoreBusy(
                    f"the sqlite store {self.path} already has {self._waiting} commits waiting "
                    "to be written: this one was not queued (the disk is slow or stuck)"
                )
            self._queue.append(pending)
            self._waiting += 1
            if len(self._queue) > 2 * MAX_QUEUED:  # mostly expired: drop them
                self._queue = collections.deque(p for p in self._queue if p.state == _QUEUED)
            if self._writer_idle:  # a busy writer takes it when it next looks
                self._wakeup.notify()
        self._track(pending)
        return await pending.future  # an answer after the deadline is dropped (not its apply)

    def _track(self, pending: _Pending) -> None:
        """Watch a new commit's deadline. One timer for the oldest, not one per
        commit: the loop is what limits group commit, and a timer per commit
        cost about a tenth of its rate. Commits share one timeout, so queue
        order is deadline order."""
        outstanding = self._outstanding
        while outstanding and outstanding[0].future.done():
            outstanding.popleft()
        outstanding.append(pending)
        if self._sweeper is None:
            self._sweeper = pending.loop.call_later(pending.timeout, self._sweep)

    def _sweep(self) -> None:
        """On the loop: expire every commit past its deadline; wake again for the next."""
        self._sweeper = None
        outstanding = self._outstanding
        now = time.monotonic()
        while outstanding:
            pending = outstanding[0]
            if not pending.future.done():
                if pending.deadline > now:
                    delay = pending.deadline - now
                    self._sweeper = pending.loop.call_later(delay, self._sweep)
                    return
                self._expire(pending)
            outstanding.popleft()

    def _expire(self, pending: _Pending) -> None:
        """On the loop, at the commit's deadline: fail it, saying what became of it."""
        timeout = pending.timeout
        with self._wakeup:
            if pending.state == _QUEUED:
                pending.state = _EXPIRED
                self._waiting -= 1
            taken = pending.state == _TAKEN
        if taken:
            _fail(
                pending.future,
                OutcomeUnknown(
                    f"the sqlite store {self.path} took this commit but did not finish writing "
                    f"it within {timeout:g}s (is the disk hung?): it may or may not be stored; "
                    "re-read before retrying"
                ),
            )
        else:
            _fail(pending.future, _not_started(self.path, timeout))

    async def close(self) -> None:
        """Write what is queued, stop both threads, release the lock. It runs
        to its end in a task of its own, even if the caller is cancelled (a
        close cut off half way would leave a thread of the store beside a
        reopened one), and a close() while one runs waits for it.

        Raises:
            StorageError: a thread of the store is stuck (a hung disk?): the
                store stays open, with its lock held; close() again later.
        """
        if self._closer is None or self._closer.done():
            if self._thread is None:
                return
            with self._wakeup:
                self._closing = True  # commits from now on are refused; queued ones are written
                self._wakeup.notify()
            self._closer = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closer)

    async def _close(self) -> None:
        thread = self._thread
        assert thread is not None  # close() starts this task only for an open store
        # Every queued commit is written or expired within COMMIT_TIMEOUT; a
        # writer still busy after that is stuck in the kernel.
        await asyncio.to_thread(thread.join, COMMIT_TIMEOUT + 1)
        if thread.is_alive():
            raise StorageError(
                f"the sqlite store {self.path} could not close: its writer is stuck (a hung "
                f"disk?); its lock on {self._lockfile.path} stays held until this process exits"
            )
        # The store counts as open until the checkpointer has stopped too: its
        # connection and its descriptor of the db file must not outlive this
        # close beside a reopened store's.
        if not await asyncio.to_thread(self._checkpointer.stop, COMMIT_TIMEOUT):
            raise StorageError(
                f"the sqlite store {self.path} could not close: its checkpoint thread is stuck "
                f"(a hung disk?); it stays open, and its lock on {self._lockfile.path} held, "
                "until a later close finds that thread ended"
            )
        self._thread = None
        self._lockfile.release()
        if self._sweeper is not None and all(p.future.done() for p in self._outstanding):
            self._sweeper.cancel()  # every commit is answered: nothing left to time
            self._sweeper = None
            self._outstanding.clear()

    def statistics(self) -> dict[str, float]:
        return {
            "commits": self._commits,
            "transactions": self._transactions,
            "index": self._index,
            "queued": self._waiting,
            "conflicts": self._conflicts,
            "failed_batches": self._failed_batches,
            **self._commit_took.statistics("commit"),
            **self._checkpointer.statistics(),
        }

    # -- writer thread -----------------------------------------------------

    def _writer(self, conn: sqlite3.Connection) -> None:
        try:
            self._write_until_closed(conn)
        finally:
            self._writer_exited = True

    def _write_until_closed(self, conn: sqlite3.Connection) -> None:
        with contextlib.closing(conn):
            while True:
                batch, stop = self._take()
                if batch:
                    try:
                        with self._checkpointer.gate:  # see _sqlite_checkpoint: WAL resets
                            self._write_batch(conn, batch)
                    except Exception as exc:  # a bug: never let it stop the writer
                        log.exception("the sqlite store %s: writing a batch failed", self.path)
                        if conn.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        error = StorageError(
                            f"the sqlite store {self.path} failed on this commit "
                            f"({type(exc).__name__}: {exc})"
                        )
                        self._post([(pending, error) for pending in batch])
                if stop:
                    return

    def _take(self) -> tuple[list[_Pending], bool]:
        """Wait for commits; take up to MAX_BATCH of them. True once closed and drained."""
        batch: list[_Pending] = []
        late: list[_Pending] = []
        with self._wakeup:
            while not self._queue and not self._closing:
                self._writer_idle = True
                self._wakeup.wait()
                self._writer_idle = False
            now = time.monotonic()
            while self._queue and len(batch) < MAX_BATCH:
                pending = self._queue.popleft()
                if pending.state != _QUEUED:
                    continue  # expired by its caller
                self._waiting -= 1
                if now >= pending.deadline:
                    pending.state = _EXPIRED
                    late.append(pending)
                else:
                    pending.state = _TAKEN
                    batch.append(pending)
            stop = self._closing and not self._queue
        if late:
            self._post([(p, _not_started(self.path, p.timeout)) for p in late])
        return batch, stop

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        outcomes: list[int | StorageError] = []  # an index, or the Conflict
        index = self._index
        first_index = index + 1
        # One cursor for the batch's statements: `conn.execute` makes (and
        # registers with the connection) a new cursor per statement.
        cursor = conn.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            if len(batch) > 1 and put_all_if(cursor, index + 1, batch):  # one statement
                outcomes.extend(range(index + 1, index + 1 + len(batch)))
                index += len(batch)
            else:
                index = self._write_each(cursor, index, batch, outcomes)
            if index == self._index:  # conflicts only: nothing to make durable
                cursor.execute("ROLLBACK")
            else:
                cursor.execute(_SET_INDEX, (index,))
        except Exception as exc:
            if len(batch) > 1 and not _fails_alike(exc):
                self._rollback(conn)
                for pending in batch:  # alone, so only the commit that fails is failed
                    self._write_batch(conn, [pending])
                return
            self._abandon(conn, batch, self._not_written(exc, len(batch)))
            return
        if index != self._index:
            try:
                started = time.perf_counter()
                self._end_transaction(cursor)
                self._commit_took.observe(time.perf_counter() - started)
            except Exception as exc:
                if _disk_full(exc):  # no complete commit frame: nothing stored
                    error: StorageError = self._not_written(exc, len(batch))
                else:
                    # The batch may be on disk: never hand its indexes out again.
                    self._index = index
                    error = OutcomeUnknown(
                        f"the sqlite store {self.path} failed to commit "
                        f"({type(exc).__name__}: {exc}): this commit may or may not be "
                        "stored; re-read before retrying"
                    )
                self._abandon(conn, batch, error)
                return
            self._index = index
            self._transactions += 1
            self._checkpointer.committed()
        written = index - first_index + 1
        self._commits += written
        self._conflicts += len(batch) - written
        self._post(list(zip(batch, outcomes, strict=True)))

    def _write_each(
        self,
        cursor: sqlite3.Cursor,
        index: int,
        batch: list[_Pending],
        outcomes: list[int | StorageError],
    ) -> int:
        """Check and write the batch's commits one by one after `index`; each
        one's index or Conflict goes to `outcomes`. Returns the last index."""
        for pending in batch:
            ops, conditions = pending.ops, pending.conditions
            if fusable(ops, conditions):  # checked and written in one statement
                conflict = put_if(cursor, index + 1, ops[0], conditions[0])
                ops = ops[1:]
            else:
                conflict = violated(cursor, conditions)
            if conflict is not None:
                outcomes.append(conflict)
                continue
            index += 1
            self._write_ops(cursor, index, ops)
            outcomes.append(index)
        return index

    @staticmethod
    def _write_ops(cursor: sqlite3.Cursor, index: int, ops: list[Entry]) -> None:
        for op in ops:
            if op.value is None:
                cursor.execute("DELETE FROM kv WHERE key = ?", (op.key,))
            else:
                cursor.execute(UPSERT, (op.key, blob(op.value), index, index))

    @staticmethod
    def _end_transaction(cursor: sqlite3.Cursor) -> None:
        cursor.execute("COMMIT")

    def _abandon(
        self, conn: sqlite3.Connection, batch: list[_Pending], error: StorageError
    ) -> None:
        """Roll back a failed batch and fail every commit of it."""
        self._failed_batches += 1
        log.error("%s", error)
        self._rollback(conn)
        self._post([(pending, error) for pending in batch])

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("the sqlite store %s: rolling back a failed batch failed", self.path)

    def _not_written(self, exc: Exception, commits: int) -> StorageError:
        if _disk_full(exc):
            return StorageError(
                f"the disk holding the sqlite store {self.path} is full: nothing of this "
                "commit was written; free some space and retry"
            )
        if _locked(exc):
            return StoreUnavailable(
                f"the sqlite store {self.path} is locked by another process (an sqlite3 "
                f"shell writing to it?) and stayed locked for {BUSY_TIMEOUT:g}s: nothing of "
                "this commit was written; end that process's transaction and retry"
            )
        return StorageError(
            f"the sqlite store {self.path} could not write a batch of {commits} commit(s) "
            f"({type(exc).__name__}: {exc}): it was rolled back, nothing of this commit "
            "was written"
        )

    def _post(self, answers: list[tuple[_Pending, int | StorageError]]) -> None:
        """From the writer: answer commits on their loop, in this order. One
        wake-up of the loop per batch, not one per commit."""
        try:
            answers[0][0].loop.call_soon_threadsafe(self._answer, answers)
        except RuntimeError:  # the loop is closed: nobody is waiting for the answers
            log.debug("the sqlite store %s: answers dropped, the loop is closed", self.path)

    def _answer(self, answers: list[tuple[_Pending, int | StorageError]]) -> None:
        """On the loop: an index is applied to the catalog, then returned; an
        error raised. Each commit's delivery inline: this runs once per commit."""
        apply = self._apply
        for pending, outcome in answers:
            if not isinstance(outcome, int):
                _fail(pending.future, outcome)
            elif apply is None:
                if not pending.future.done():
                    pending.future.set_result(outcome)
            else:  # _deliver's common case inline: once per commit
                try:
                    apply(outcome, pending.ops)
                except Exception as exc:
                    self._undelivered(pending, outcome, exc)
                    continue
                if not pending.future.done():
                    pending.future.set_result(outcome)

    def _undelivered(self, pending: _Pending, index: int, exc: Exception) -> None:
        """On the loop, inside the handler of `exc`: a durable commit the
        catalog could not apply is logged and its caller told."""
        log.exception(
            "the sqlite store %s stored a commit at index %d that the catalog could not "
            "apply; restart the agent to reload the catalog from the store",
            self.path,
            index,
        )
        _fail(
            pending.future,
            StorageError(
                f"the write is stored at index {index} but could not be applied to the "
                f"catalog ({type(exc).__name__}: {exc}): restart the agent to reload it"
            ),
        )


def _fails_alike(exc: Exception) -> bool:
    """Whether `exc` is the store's state, not one commit's: each commit of
    the batch would fail alike, so it is not retried commit by commit (which
    would wait out the busy timeout once per commit, holding the queue)."""
    return _disk_full(exc) or _locked(exc)


def _disk_full(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return _primary_code(exc) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _locked(exc: Exception) -> bool:
    """sqlite's write lock held by another process past BUSY_TIMEOUT
    (SQLITE_LOCKED is a conflict inside one process's shared cache: unused)."""
    return isinstance(exc, sqlite3.Error) and _primary_code(exc) == sqlite3.SQLITE_BUSY


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _not_started(path: Path, timeout: float) -> StoreUnavailable:
    return StoreUnavailable(
        f"the sqlite store {path} did not get to this commit within {timeout:g}s (the disk "
        "is slow or stuck): not written, safe to retry"
    )


def _fail(future: asyncio.Future[int], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
