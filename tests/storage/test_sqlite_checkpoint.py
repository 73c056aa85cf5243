"""The sqlite store's WAL checkpoints: on their own thread, never inside a commit.

Real sqlite files in tmp_path; the WAL's size is read from the file system
and what reached the main db file from a copy of that file alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from waypost import ConfigError, StorageError
from waypost.storage import Entry, open_storage
from waypost.storage import _sqlite_checkpoint as checkpoint
from waypost.storage import sqlite as sqlite_backend
from waypost.storage.sqlite import SqliteStorage

BIG = 200 * 1024  # a value of 50 pages: a few commits pass sqlite's 1,000-page auto-checkpoint


def _wal(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _copy_outside(db: Path, copy: Path) -> None:
    """Copy the live db file from another process: closing a descriptor of it
    here would drop the store's POSIX locks on it (see the checkpointer)."""
    subprocess.run(["cp", str(db), str(copy)], check=True)


_OPENED: list[SqliteStorage] = []


@pytest.fixture(autouse=True)
async def _close_what_a_failed_test_left_open() -> AsyncIterator[None]:
    """A test that fails before its close() would leave its checkpointer
    running into the next test's monkeypatches."""
    yield
    while _OPENED:
        with contextlib.suppress(StorageError):  # a thread of it stuck: the test said so
            await _OPENED.pop().close()  # a no-op once closed


async def _opened(db: Path) -> SqliteStorage:
    store = open_storage(f"sqlite://{db}")
    assert isinstance(store, SqliteStorage)
    await store.open(lambda index, entries, snapshot=False: None)
    _OPENED.append(store)
    return store


async def _until(probe: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_commit_never_checkpoints_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the checkpointer doing nothing, 8 MB of commits stay in the WAL:
    sqlite's own auto-checkpoint (in the COMMIT past 1,000 pages) is off."""
    monkeypatch.setattr(checkpoint, "_run_checkpoint", lambda conn: (0, 0, 0))
    db = tmp_path / "c.db"
    store = await _opened(db)
    for i in range(40):
        await store.commit([Entry(f"k{i}", os.urandom(BIG))])
    assert _wal(db) > 7 * 2**20  # auto-checkpointed, it would start over at ~4 MB
    copy = tmp_path / "main-only.db"
    _copy_outside(db, copy)  # the main file alone, as a checkpoint left it
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM kv").fetchone() == (0,)
    await store.close()


async def test_the_checkpoint_thread_copies_the_wal_and_the_writes_survive_reopen(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    store = await _opened(db)
    for i in range(20):
        await store.commit([Entry(f"k{i}", os.urandom(BIG))])
    done = store.statistics()["checkpoints"]
    await store.commit([Entry("last", b"x")])
    await _until(lambda: store.statistics()["checkpoints"] > done)  # one after the last commit
    copy = tmp_path / "main-only.db"
    _copy_outside(db, copy)
    with sqlite3.connect(copy) as conn:  # no WAL beside it: only what was checkpointed
        assert conn.execute("SELECT count(*) FROM kv").fetchone() == (21,)
    await store.close()
    assert not Path(f"{db}-wal").exists()  # the last connection closed checkpoints it all
    seen: dict[str, bytes | None] = {}
    again = open_storage(f"sqlite://{db}")
    await again.open(
        lambda index, entries, snapshot=False: seen.update((e.key, e.value) for e in entries)
    )
    assert len(seen) == 21 and seen["last"] == b"x"
    await again.close()


def _frames(db: Path) -> int:
    """The WAL's frames as its file's size counts them (32-byte header, 24 per frame)."""
    return max(0, (_wal(db) - 32) // (4096 + 24))


@pytest.mark.parametrize("pace", ["continuous", "paced", "never-quick"])
async def test_the_wal_stays_bounded_under_continuous_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pace: str
) -> None:
    """A commit every moment: the passive checkpoints alone would seldom let
    the WAL start over; the held one does, and the file is trimmed. Commits
    slower than the checkpoints: it starts over on its own, counted all the
    same. A disk so busy that no passive checkpoint is quick, nor copies
    everything: the writer is held at MAX_FRAMES."""
    if pace == "never-quick":
        monkeypatch.setattr(
            checkpoint.Checkpointer, "_catch_up", staticmethod(lambda conn: (_frames(db), False))
        )
    monkeypatch.setattr(checkpoint, "INTERVAL", 0.005)
    monkeypatch.setattr(checkpoint, "RESET_FRAMES", 256)  # 1 MiB
    monkeypatch.setattr(checkpoint, "MAX_FRAMES", 1024)  # held even if no checkpoint is quick
    monkeypatch.setattr(sqlite_backend, "WAL_KEEP_BYTES", 2 * 2**20)
    db = tmp_path / "c.db"
    store = await _opened(db)
    largest = 0
    for i in range(100 if pace == "paced" else 400):  # 400 * 64 KiB = 25 MiB through the WAL
        await store.commit([Entry(f"k{i % 50}", os.urandom(64 * 1024))])
        largest = max(largest, _wal(db))
        if pace == "paced":
            await asyncio.sleep(0.01)  # the checkpointer copies each commit before the next
    stats = store.statistics()
    assert stats["wal_resets"] > 0
    if pace == "never-quick":  # only the holds let the WAL start over: one per 1024 frames
        assert stats["writer_holds"] >= 4 and stats["wal_resets"] >= 4
    assert largest < 8 * 2**20, f"the WAL grew to {largest / 2**20:.1f} MiB"
    # trimmed to about WAL_KEEP_BYTES each time it starts over (at 1 or 4 MiB)
    assert _wal(db) <= (5 if pace == "never-quick" else 3) * 2**20
    await store.close()


async def test_a_failed_checkpoint_is_logged_and_fails_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = checkpoint._run_checkpoint
    failures = [3]

    def flaky(conn: sqlite3.Connection) -> tuple[int, int, int]:
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn)

    monkeypatch.setattr(checkpoint, "_run_checkpoint", flaky)
    monkeypatch.setattr(checkpoint, "INTERVAL", 0.01)
    caplog.set_level(logging.WARNING, logger="waypost.storage")
    db = tmp_path / "c.db"
    store = await _opened(db)
    for i in range(3):  # each commit makes the thread try again: three failures
        assert await store.commit([Entry(f"k{i}", b"v")]) == i + 1
        await _until(lambda: store.statistics()["checkpoint_failures"] == i + 1)  # noqa: B023
    assert store.statistics()["checkpoints"] == 0
    assert await store.commit([Entry("more", b"v")]) == 4
    await _until(lambda: store.statistics()["checkpoints"] > 0)  # the thread lived on
    failed = [r for r in caplog.records if "a WAL checkpoint failed" in r.getMessage()]
    assert len(failed) == 1 and "disk I/O error" in failed[0].getMessage()  # once a streak
    assert any("checkpoints succeed again" in r.getMessage() for r in caplog.records)
    await store.close()


async def test_a_grown_wal_file_is_trimmed_once_it_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoints held off, the WAL grows to 10 MB; once they run, the
    WAL starts over and the next commit trims the file to journal_size_limit."""
    real = checkpoint._run_checkpoint
    held_off = [True]
    monkeypatch.setattr(
        checkpoint, "_run_checkpoint", lambda conn: (0, 0, 0) if held_off[0] else real(conn)
    )
    monkeypatch.setattr(checkpoint, "INTERVAL", 0.01)
    monkeypatch.setattr(checkpoint, "RESET_FRAMES", 256)
    monkeypatch.setattr(checkpoint, "MAX_FRAMES", 1024)  # held even on a slow machine
    monkeypatch.setattr(sqlite_backend, "WAL_KEEP_BYTES", 2 * 2**20)
    db = tmp_path / "c.db"
    store = await _opened(db)
    for i in range(50):
        await store.commit([Entry(f"k{i}", os.urandom(BIG))])
    assert _wal(db) > 9 * 2**20
    held_off[0] = False
    await store.commit([Entry("wake", b"")])  # the checkpointer runs again
    await _until(lambda: store.statistics()["writer_holds"] > 0)  # held, everything copied
    await store.commit([Entry("after", b"")])  # starts the WAL over, then trims the file
    assert _wal(db) <= 2 * 2**20
    await _until(lambda: store.statistics()["wal_resets"] == 1)  # the next checkpoint sees it
    await store.close()


def test_no_start_beside_a_thread_an_earlier_stop_timed_out_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop() that timed out (a checkpoint stuck on a slow disk): start()
    refuses while that thread runs, since its connection and its descriptor
    of the db file are still open; once it returns, stop() ends it and closes
    the descriptor, and start() works again."""
    db = tmp_path / "c.db"
    sqlite3.connect(db).execute("PRAGMA journal_mode=WAL").connection.close()
    stuck, entered = threading.Event(), threading.Event()

    def slow(self: checkpoint.Checkpointer, conn: sqlite3.Connection, db: int) -> None:
        entered.set()
        stuck.wait(10)

    monkeypatch.setattr(checkpoint.Checkpointer, "checkpoint", slow)
    pointer = checkpoint.Checkpointer(db)
    pointer.start()
    descriptor = pointer._db
    assert descriptor is not None
    pointer.committed()
    assert entered.wait(5)
    assert pointer.stop(timeout=0.05) is False  # timed out
    with pytest.raises(StorageError, match="has not stopped yet"):
        pointer.start()
    os.fstat(descriptor)  # still open
    stuck.set()
    assert pointer.stop(timeout=5) is True
    with pytest.raises(OSError):
        os.fstat(descriptor)  # closed with its thread
    pointer.start()
    assert pointer.stop(timeout=5) is True


async def _stuck_in_a_checkpoint(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[SqliteStorage, threading.Event]:
    """A store on `db` holding one commit, its checkpoint thread stuck in its
    first checkpoint (a hung disk) until the event returned is set."""
    stuck, entered = threading.Event(), threading.Event()
    real = checkpoint.Checkpointer.checkpoint

    def slow(self: checkpoint.Checkpointer, conn: sqlite3.Connection, fd: int) -> None:
        if not stuck.is_set():
            entered.set()
            stuck.wait(10)
        real(self, conn, fd)

    monkeypatch.setattr(checkpoint.Checkpointer, "checkpoint", slow)
    store = await _opened(db)
    await store.commit([Entry("k", b"v")])
    assert await asyncio.to_thread(entered.wait, 5)
    return store, stuck


async def test_a_close_that_could_not_stop_the_checkpointer_keeps_the_store_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store counts as open until its checkpoint thread has stopped: a
    reopen beside that thread's connection and descriptor (whose close would
    drop the new connections' locks) is refused, and so is another store on
    the file; a second close() finishes the first one's work."""
    monkeypatch.setattr(sqlite_backend, "COMMIT_TIMEOUT", 0.2)  # also the stop's timeout
    db = tmp_path / "c.db"
    store, stuck = await _stuck_in_a_checkpoint(db, monkeypatch)
    with pytest.raises(StorageError, match="checkpoint thread is stuck"):
        await store.close()  # the writer stops; the checkpointer does not
    with pytest.raises(StorageError, match="close did not finish"):
        await store.open(lambda index, entries, snapshot=False: None)
    with pytest.raises(ConfigError, match="in use"):
        await open_storage(f"sqlite://{db}").open(lambda index, entries, snapshot=False: None)
    stuck.set()
    await store.close()
    seen: dict[str, bytes | None] = {}
    await store.open(
        lambda index, entries, snapshot=False: seen.update((e.key, e.value) for e in entries)
    )
    assert seen == {"k": b"v"}
    await store.close()


async def test_a_cancelled_close_still_runs_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close cancelled while it waits for the checkpointer (a shutdown in
    a hurry) goes on in its own task: the store stays refused until that
    has ended, and it ends by itself, with no second close()."""
    db = tmp_path / "c.db"
    store, stuck = await _stuck_in_a_checkpoint(db, monkeypatch)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0.05)  # waiting for the checkpoint thread
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    with pytest.raises(StorageError, match="close did not finish"):
        await store.open(lambda index, entries, snapshot=False: None)
    stuck.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # no second close(): the first one's task ends by itself
        try:
            await store.open(lambda index, entries, snapshot=False: None)
            break
        except StorageError:
            assert loop.time() < deadline, "the cancelled close never finished"
            await asyncio.sleep(0.02)
    await store.close()


def test_a_thread_that_cannot_start_leaves_nothing_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of threads: start() raises and keeps neither its connection nor
    its descriptor, and a later start() works."""
    db = tmp_path / "c.db"
    sqlite3.connect(db).execute("PRAGMA journal_mode=WAL").connection.close()
    pointer = checkpoint.Checkpointer(db)
    real = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refused)
    with pytest.raises(StorageError, match="cannot start its checkpoint thread"):
        pointer.start()
    assert pointer._thread is None and pointer._db is None
    monkeypatch.setattr(threading.Thread, "start", real)
    pointer.start()
    assert pointer.stop(timeout=5) is True


def test_the_stop_comes_even_if_the_log_cannot_be_written() -> None:
    """_halt exits with EX_IOERR whatever the logging does (a log file on
    the full disk whose flush raises)."""
    script = (
        "import logging, pathlib\n"
        "from waypost.storage import _sqlite_checkpoint as checkpoint\n"
        "class Full(logging.Handler):\n"
        "    def emit(self, record): pass\n"
        "    def flush(self): raise OSError(28, 'No space left on device')\n"
        "logging.getLogger().addHandler(Full())\n"
        "checkpoint._halt(pathlib.Path('c.db'), OSError(5, 'Input/output error'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == checkpoint.EXIT_FSYNC_FAILED, done.stderr.decode()[-2000:]


def test_the_db_file_is_fsynced_before_the_writer_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages the passive checkpoints copied are flushed while the writer
    goes on, not inside the hold (whose own fsync would flush them all)."""
    db = tmp_path / "c.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (v BLOB)")
    for _ in range(20):
        writer.execute("INSERT INTO t VALUES (?)", (os.urandom(16 * 1024),))
    pointer = checkpoint.Checkpointer(db)
    monkeypatch.setattr(checkpoint, "RESET_FRAMES", 16)
    monkeypatch.setattr(pointer, "_catch_up", lambda conn: (checkpoint.RESET_FRAMES, True))
    synced: list[tuple[int, bool]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append((os.fstat(fd).st_ino, pointer.gate.locked()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)  # the checkpointer calls it by its module
    conn = sqlite3.connect(db, isolation_level=None)
    fd = os.open(db, os.O_RDONLY)
    pointer.checkpoint(conn, fd)
    assert synced == [(db.stat().st_ino, False)] and pointer.statistics()["writer_holds"] == 1
    conn.close()
    writer.close()
    os.close(fd)  # after the connections: closing it drops this process's locks on the file


async def test_the_count_of_starts_over_carries_across_a_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing deletes the WAL file; the one the reopened store makes counts
    its sequence numbers from the start again, which must not unsay the
    starts-over counted before."""
    monkeypatch.setattr(checkpoint, "INTERVAL", 0.005)
    db = tmp_path / "c.db"
    store = await _opened(db)
    for i in range(30):
        await store.commit([Entry(f"k{i}", os.urandom(64 * 1024))])
        await asyncio.sleep(0.01)  # each commit copied before the next: the WAL starts over
    await _until(lambda: store.statistics()["wal_resets"] >= 5)
    counted = store.statistics()["wal_resets"]
    await store.close()
    assert not Path(f"{db}-wal").exists()
    await store.open(lambda index, entries, snapshot=False: None)
    done = store.statistics()["checkpoints"]
    await store.commit([Entry("again", b"v")])
    await _until(lambda: store.statistics()["checkpoints"] > done)
    assert store.statistics()["wal_resets"] >= counted
    await store.close()


async def test_another_process_reading_the_live_store_loses_no_later_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's `sqlite3 catalog.db` beside the running agent: when the
    last connection to a WAL database closes, sqlite checkpoints and deletes
    the WAL unless it cannot lock the db file exclusively, which the agent's
    own connections' locks prevent. Closing any descriptor of a file drops
    every POSIX lock the process holds on it, so a checkpointer that opened
    and closed the db file to fsync it (before each hold) let that reader
    delete the live WAL: every later commit went to the deleted file."""
    monkeypatch.setattr(checkpoint, "INTERVAL", 0.005)
    monkeypatch.setattr(checkpoint, "RESET_FRAMES", 1)  # every checkpoint holds, and fsyncs
    monkeypatch.setattr(checkpoint, "MAX_FRAMES", 1)  # quick or not
    db = tmp_path / "c.db"
    store = await _opened(db)
    for i in range(20):
        await store.commit([Entry(f"k{i}", os.urandom(64 * 1024))])
    await _until(lambda: store.statistics()["writer_holds"] > 0)
    reader = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
    seen = "print(c.execute('SELECT count(*) FROM kv WHERE key = ?', (sys.argv[2],)).fetchone()[0])"
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", reader + seen, str(db), "k0", stdout=asyncio.subprocess.PIPE
    )
    assert (await other.communicate())[0].strip() == b"1" and other.returncode == 0
    assert Path(f"{db}-wal").exists()  # the live WAL is still there
    await store.commit([Entry("after", b"acknowledged")])
    other = await asyncio.create_subprocess_exec(  # what a restart now would find
        sys.executable, "-c", reader + seen, str(db), "after", stdout=asyncio.subprocess.PIPE
    )
    assert (await other.communicate())[0].strip() == b"1"
    await store.close()


_FAILING_FSYNC = """
import asyncio, errno, logging, os, sys
from waypost.storage import Entry, open_storage
from waypost.storage import _sqlite_checkpoint as checkpoint

db = sys.argv[1]
logging.basicConfig(level=logging.WARNING)
checkpoint.INTERVAL = 0.005
checkpoint.RESET_FRAMES = checkpoint.MAX_FRAMES = 1  # every checkpoint holds, and fsyncs
real = os.fsync


def failing(fd):  # the disk failed to write back some of the db file's pages
    if os.fstat(fd).st_ino == os.stat(db).st_ino:
        raise OSError(errno.EIO, "Input/output error")
    real(fd)


os.fsync = failing


async def main():
    store = open_storage(f"sqlite://{db}")
    await store.open(lambda index, entries, snapshot=False: None)
    for i in range(400):
        await store.commit([Entry(f"k{i}", os.urandom(64 * 1024))])
        print(f"k{i}", flush=True)  # acknowledged
    await store.close()


asyncio.run(main())
"""


async def test_a_failed_fsync_of_the_db_file_stops_the_process_and_keeps_the_wal(
    tmp_path: Path,
) -> None:
    """Linux may drop the pages whose writeback failed, marked clean, and
    sqlite counts a checkpoint's copy as done before its fsync: going on
    could let the WAL start over without those pages anywhere on disk. The
    process stops at once (EX_IOERR) without closing the store; the WAL is
    still there, and the next open finds every acknowledged commit."""
    db = tmp_path / "c.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FAILING_FSYNC,
        str(db),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == checkpoint.EXIT_FSYNC_FAILED, err.decode()[-2000:]
    assert b"an fsync in a checkpoint failed (OSError: [Errno 5]" in err
    acked = out.decode().split()
    assert 0 < len(acked) < 400  # stopped at the first hold, not after the last commit
    assert Path(f"{db}-wal").exists()  # not closed: the WAL is kept
    seen: dict[str, bytes | None] = {}
    store = open_storage(f"sqlite://{db}")
    await store.open(
        lambda index, entries, snapshot=False: seen.update((e.key, e.value) for e in entries)
    )
    assert set(acked) <= set(seen)
    await store.close()


def test_which_checkpoint_failures_stop_the_process() -> None:
    """A failed fsync, ours or sqlite's (SQLITE_IOERR_FSYNC), stops it; any
    other failure of a checkpoint (a read error, a busy file) is retried."""
    fsync = sqlite3.OperationalError("disk I/O error")
    fsync.sqlite_errorcode = sqlite3.SQLITE_IOERR_FSYNC  # type: ignore[attr-defined]
    read = sqlite3.OperationalError("disk I/O error")
    read.sqlite_errorcode = sqlite3.SQLITE_IOERR_READ  # type: ignore[attr-defined]
    assert checkpoint._fsync_failed(OSError(5, "Input/output error"))
    assert checkpoint._fsync_failed(fsync)
    assert not checkpoint._fsync_failed(read)
    assert not checkpoint._fsync_failed(sqlite3.OperationalError("database is locked"))


async def test_a_writer_that_cannot_start_leaves_the_store_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of threads when the writer starts: open() raises StorageError, the
    checkpointer is stopped and the lock released, and a later open works."""
    real = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        if self.name == "waypost-sqlite-writer":
            raise RuntimeError("can't start new thread")
        real(self)

    def checkpointers() -> int:
        return sum(t.name == "waypost-sqlite-checkpoint" for t in threading.enumerate())

    monkeypatch.setattr(threading.Thread, "start", refused)
    db = tmp_path / "c.db"
    store = open_storage(f"sqlite://{db}")
    before = checkpointers()
    with pytest.raises(StorageError, match="can't start new thread"):
        await store.open(lambda index, entries, snapshot=False: None)
    assert checkpointers() == before  # the one that open() started is stopped
    monkeypatch.setattr(threading.Thread, "start", real)
    other = await _opened(db)  # the lock was released
    await other.commit([Entry("k", b"v")])
    await other.close()
    await store.open(lambda index, entries, snapshot=False: None)
    await store.close()
