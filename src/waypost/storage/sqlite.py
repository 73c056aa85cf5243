"""`sqlite:///path/catalog.db`: the embedded durable store.

Design: one writer thread owns the connection. Commits from the event loop go
into a queue; the writer takes everything waiting (up to `MAX_BATCH` commits),
writes it in one transaction and fsyncs once (WAL, synchronous=FULL). That is
group commit: fifty concurrent registrations cost one fsync, not fifty, and
each still gets its own index. Only after the transaction is on disk does the
writer hand the batch back to the loop, where the catalog applies it and the
callers are answered, in index order. A failed transaction is rolled back and
every caller in it gets a StorageError; nothing of it reaches the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from .._exceptions import ConfigError, StorageError
from .base import ApplyFn, Condition, Entry, Storage

MAX_BATCH = 512

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_index INTEGER NOT NULL,
    modify_index INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_UPSERT = (
    "INSERT INTO kv (key, value, create_index, modify_index) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, modify_index = excluded.modify_index"
)


class _Pending:
    __slots__ = ("future", "loop", "ops")

    def __init__(self, ops: list[Entry], loop: asyncio.AbstractEventLoop) -> None:
        self.ops = ops
        self.loop = loop
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
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._apply: ApplyFn | None = None
        self._index = 0
        self._commits = 0
        self._transactions = 0
        self._closing = False

    async def open(self, apply: ApplyFn) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.executescript(_SCHEMA)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            rows = conn.execute("SELECT key, value, create_index, modify_index FROM kv").fetchall()
            row = conn.execute("SELECT value FROM meta WHERE name = 'index'").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the sqlite store at {self.path}: {exc}") from exc
        self._index = row[0] if row else 0
        # Applied even when empty: the index must survive a restart of a store
        # whose last commits only deleted keys.
        apply(self._index, [Entry(k, bytes(v), c, m) for k, v, c, m in rows])
        self._apply = apply
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="waypost-sqlite-writer", daemon=True
        )
        self._thread.start()

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        # TEMPORARY until the conditions land in the writer: ignored here.
        if self._thread is None or self._closing:
            raise StorageError("the sqlite store is closed")
        pending = _Pending(ops, asyncio.get_running_loop())
        self._queue.put(pending)
        return await pending.future

    async def close(self) -> None:
        if self._thread is None:
            return
        self._closing = True  # commits from now on are refused, not queued behind the stop
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def statistics(self) -> dict[str, float]:
        return {
            "commits": self._commits,
            "transactions": self._transactions,
            "index": self._index,
        }

    # -- writer thread -----------------------------------------------------

    def _writer(self, conn: sqlite3.Connection) -> None:
        with contextlib.closing(conn):
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stop = self._drain(batch)
                self._write_batch(conn, batch)
                if stop:
                    return

    def _drain(self, batch: list[_Pending]) -> bool:
        """Add whatever else is waiting to `batch`; True if close() was asked."""
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        first_index = self._index + 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            for offset, pending in enumerate(batch):
                self._write_ops(conn, first_index + offset, pending.ops)
            last = first_index + len(batch) - 1
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('index', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (last,),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.loop.call_soon_threadsafe(_fail, pending.future, exc)
            return
        self._index = last
        self._transactions += 1
        self._commits += len(batch)
        for offset, pending in enumerate(batch):
            pending.loop.call_soon_threadsafe(self._deliver, pending, first_index + offset)

    @staticmethod
    def _write_ops(conn: sqlite3.Connection, index: int, ops: list[Entry]) -> None:
        for op in ops:
            if op.value is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (op.key,))
            else:
                conn.execute(_UPSERT, (op.key, op.value, index, index))

    def _deliver(self, pending: _Pending, index: int) -> None:
        """On the loop: apply the durable batch to the catalog, then answer the caller."""
        if self._apply is not None:
            self._apply(index, pending.ops)
        if not pending.future.done():
            pending.future.set_result(index)


def _fail(future: asyncio.Future[int], exc: Exception) -> None:
    if not future.done():
        future.set_exception(StorageError(f"the sqlite store could not write: {exc}"))
