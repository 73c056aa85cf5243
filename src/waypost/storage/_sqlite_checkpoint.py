"""WAL checkpoints of the sqlite store, on their own thread and connection.

Why: sqlite's auto-checkpoint runs inside the COMMIT that takes the WAL past
1,000 pages, on the writer thread: it copies the WAL's pages into the main
db file and fsyncs it before that COMMIT returns. On the 545 MB store of
1M instances under 1,000 writes/s that was 2.7 COMMITs a second taking a
median 20-23 ms, up to 248 ms (bench/agent/commit_timing.py), and every
commit queued behind one waited too.
So the writer runs with `wal_autocheckpoint=0` and this thread checkpoints
instead, from a second connection, so a COMMIT only appends and fsyncs the
WAL.

How: sqlite documents that in WAL mode a checkpoint may run concurrently
with readers and writers (wal.html, "Checkpointing"); a PASSIVE one copies
every frame it can without waiting for any lock and never blocks the writer.
The writer calls `committed()` after each transaction; this thread then runs
one PASSIVE checkpoint at most every `INTERVAL` seconds while writes come in.
Durability is untouched: a COMMIT is durable once its WAL frames are fsynced
(synchronous=FULL on the writer), and a checkpoint that fails or is cut off by
a crash leaves those frames in the WAL, where the next open finds them.

Bounding the WAL: the writer starts the WAL over from its beginning when its
next transaction finds every frame already checkpointed. Under continuous
churn a PASSIVE checkpoint nearly always finishes just after another commit
landed (at 1,000 writes/s the writer commits every 1-2 ms), so the WAL would
start over only by chance, with no bound on its size (in the 1M benchmark's
churn about half of the starts-over came without a hold). So once the WAL
holds `RESET_FRAMES` frames, the passive checkpoint (which copied nearly all
of them without holding anything up; repeated up to `CATCH_UP` times until
one is quick) is followed by a second one while the writer is held between
two transactions (`gate`, a lock the writer takes around each batch): that
one copies only what landed during the first, and the writer's next
transaction starts the WAL over. The hold is that short copy and two fsyncs,
of the WAL and of the db file, and the db file's would be long: sqlite
fsyncs it only after a checkpoint that copied everything, so it would flush
every page the passive checkpoints copied since the last hold (up to 40 ms a
hold, bench/agent/commit_timing.py). So the db file is fsynced just before
the hold, with the writer going on, and the hold's own fsync finds a few
pages to flush (then a hold took 6.7 ms at most). That fsync goes through a
descriptor of the db file opened by `start()` and closed by `stop()` only
once the store's connections are closed, never one opened for the call:
closing any descriptor of a file drops every POSIX lock the process holds on
it, sqlite's shared lock on the db file among them (sqlite.org's "How To
Corrupt", 2.2.1), and without it another process's connection to the store
(an operator's `sqlite3`), closing last by its reckoning, checkpoints and
deletes the live WAL, so that every later commit goes to a deleted file.
(The WAL's header is read by path: sqlite locks nothing in the WAL file, its
WAL locks are in the -shm.) When the disk is so busy that no passive
checkpoint gets quick, the hold waits for a later round, until the WAL
reaches `MAX_FRAMES`: that is its bound (while checkpoints succeed). A plain
lock, not sqlite's RESTART checkpoint: that takes sqlite's write lock for
the whole copy, and a writer waiting on it polls with sqlite's busy handler
(sleeps of 1, 2, 5 ... 100 ms), so it also waits out a sleep after the lock
is free. The writer's `journal_size_limit` trims a WAL file that grew past
`WAL_KEEP_BYTES` once it starts over (a file that keeps its size is cheaper
to fsync: overwriting its blocks does not change the file's metadata).

A failed checkpoint is logged (once, until one succeeds again) and counted;
it never fails a commit. A failed fsync is different (ours of the db file
before a hold, or sqlite's of the WAL or the db file inside a checkpoint):
Linux may have dropped the pages it could not write, marked clean, so a
later fsync succeeds without them, and sqlite records a checkpoint's copy as
done before the fsync that makes it durable. Retrying would let the WAL
start over while the only copy of those pages on disk is in it. So the
process stops at once, without closing the store (the last connection's
close would checkpoint and delete the WAL), with exit status 74 (EX_IOERR)
and a critical log line; on the next start sqlite rebuilds its WAL index and
copies the whole WAL again (PostgreSQL stops the same way since 12, for the
same reason). A COMMIT whose WAL fsync fails answers OutcomeUnknown; on
Linux every descriptor then open on the WAL sees that error on its next
fsync, so the next checkpoint stops the process too.

The WAL's starts-over are counted from its header, whatever caused them
(a passive checkpoint that copied everything between two commits does too):
sqlite adds one to its checkpoint sequence number each time
(fileformat2.html, "WAL File Format"); counting the holds instead missed
every start-over when commits came slower than the checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import NoReturn

from .._exceptions import StorageError

log = logging.getLogger("waypost.storage")

#: Seconds between checkpoints while commits come in. At the scale
#: benchmark's 1,000 writes/s that is a few hundred pages a checkpoint.
INTERVAL = 0.25
#: Frames (pages) in the WAL past which a checkpoint holds the writer for a
#: moment so that the WAL starts over: 32 MiB at sqlite's 4 KiB pages.
RESET_FRAMES = 8192
#: Frames past which the writer is held even when the checkpoints before did
#: not get quick (a busy disk): the WAL's bound, 128 MiB.
MAX_FRAMES = 4 * RESET_FRAMES
#: Most PASSIVE checkpoints in a row before the one with the writer held, and
#: the duration (seconds) under which one needs no successor: the held one
#: then copies only what landed during a quick one.
CATCH_UP = 4
QUICK = 0.005
#: The exit status of a process stopped by a failed fsync in a checkpoint.
EXIT_FSYNC_FAILED = os.EX_IOERR
#: sqlite's codes for a failed fsync (3.11's sqlite3 module names them).
_FSYNC_FAILED = frozenset({sqlite3.SQLITE_IOERR_FSYNC, sqlite3.SQLITE_IOERR_DIR_FSYNC})
#: The writer's journal_size_limit: a WAL file past this is trimmed back to
#: it once it starts over.
WAL_KEEP_BYTES = 64 * 2**20


class Durations:
    """How many durations passed each of a few bounds, and the longest: the
    writer's and checkpointer's debug counters (statistics(), so metrics and
    /v1/agent/self), cheap enough for every transaction."""

    BOUNDS_MS = (1, 5, 20, 100)

    def __init__(self) -> None:
        self.count = 0
        self.over = [0] * len(self.BOUNDS_MS)
        self.longest = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        ms = seconds * 1000
        if ms > self.longest:
            self.longest = ms
        for i, bound in enumerate(self.BOUNDS_MS):
            if ms <= bound:
                break
            self.over[i] += 1

    def statistics(self, name: str) -> dict[str, float]:
        stats: dict[str, float] = {
            f"{name}_over_{b}ms": n for b, n in zip(self.BOUNDS_MS, self.over, strict=True)
        }
        stats[f"{name}_max_ms"] = round(self.longest, 1)
        return stats


class Checkpointer:
    """The store's checkpoint thread; `start()` once the db is open and in WAL mode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dirty = threading.Event()  # commits since the last checkpoint (or stop)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: int | None = None  # a descriptor of the db file, to fsync it (see the hold)
        #: Held by the writer around each batch; by this thread to start the WAL over.
        self.gate = threading.Lock()
        self.failures = 0
        self.resets = 0  # the WAL started over (read from its header)
        self._generation: int | None = None  # the WAL header's sequence number, last seen
        self.wal_frames = 0  # frames in the WAL at the last checkpoint
        self.took = Durations()  # each checkpoint that succeeded (the writer goes on meanwhile)
        self.held = Durations()  # each hold of the writer, to start the WAL over
        self._failing = False

    def start(self) -> None:
        """Raises StorageError while a thread an earlier stop() timed out on
        (a checkpoint stuck on a slow disk) still runs: its connection and
        descriptor stay open with it, and the store must not open beside them."""
        if self._thread is not None:
            raise StorageError(
                f"the sqlite store {self.path}: its checkpoint thread has not stopped yet "
                "(stuck on a slow disk?); close the store again once it has"
            )
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL, then the db file
            self._db = os.open(self.path, os.O_RDONLY)
        except (sqlite3.Error, OSError):
            conn.close()
            raise
        self._dirty.clear()
        # The WAL file is new (the last connection to close deleted it): its
        # sequence number starts again.
        self._generation = None
        self._stopping = threading.Event()
        thread = threading.Thread(
            target=self._run,
            args=(conn, self._db, self._stopping),
            name="waypost-sqlite-checkpoint",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": nothing of this start stays open
            conn.close()
            os.close(self._db)
            self._db = None
            raise StorageError(
                f"the sqlite store {self.path}: cannot start its checkpoint thread ({exc})"
            ) from exc
        self._thread = thread

    def committed(self) -> None:
        """From the writer, after each transaction: there are frames to copy."""
        if not self._dirty.is_set():
            self._dirty.set()

    def stop(self, timeout: float) -> bool:
        """Stop the thread (its connection closes; the store's last connection
        to close checkpoints what is left and removes the WAL); whether it has
        stopped (False: still stuck after `timeout`; call again later). Only
        once the writer's connection is closed: the db file's descriptor closes
        here too, which would drop that connection's locks (see the hold). One
        caller at a time: the store's, whose close runs in a single task."""
        thread = self._thread
        if thread is None:
            return True
        self._stopping.set()
        self._dirty.set()
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        if self._db is not None:
            os.close(self._db)
            self._db = None
        return True

    def _run(self, conn: sqlite3.Connection, db: int, stopping: threading.Event) -> None:
        try:
            while True:
                self._dirty.wait()
                if stopping.is_set():
                    return
                self._dirty.clear()
                self.checkpoint(conn, db)
                if stopping.wait(INTERVAL):
                    return
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection, db: int) -> None:
        """One PASSIVE checkpoint; past RESET_FRAMES, a second with the writer
        held. `db`: a descriptor of the db file, never closed while the store
        is open (see the hold)."""
        started = time.perf_counter()
        try:
            frames, quick = self._catch_up(conn)
            if frames >= RESET_FRAMES and (quick or frames >= MAX_FRAMES):
                os.fsync(db)  # see "the hold" above
                with self.gate:  # between two of the writer's transactions
                    held = time.perf_counter()
                    _busy, frames, _copied = _run_checkpoint(conn)
                    self.held.observe(time.perf_counter() - held)
        except Exception as exc:  # never let it stop the thread: commits do not need it
            if _fsync_failed(exc):
                _halt(self.path, exc)
            self._failed(exc)
            return
        if self._failing:
            log.warning("the sqlite store %s: WAL checkpoints succeed again", self.path)
            self._failing = False
        self.wal_frames = max(frames, 0)
        self.took.observe(time.perf_counter() - started)
        self._count_resets()

    def _count_resets(self) -> None:
        generation = _wal_generation(Path(f"{self.path}-wal"))
        if generation is None:
            return
        if self._generation is not None:
            self.resets += generation - self._generation
        self._generation = generation

    def statistics(self) -> dict[str, float]:
        return {
            "checkpoints": self.took.count,
            "checkpoint_failures": self.failures,
            "wal_resets": self.resets,
            "writer_holds": self.held.count,
            "wal_frames": self.wal_frames,
            **self.took.statistics("checkpoint"),
            **self.held.statistics("writer_held"),
        }

    @staticmethod
    def _catch_up(conn: sqlite3.Connection) -> tuple[int, bool]:
        """PASSIVE checkpoints until one is quick (what landed during it is
        little), at most CATCH_UP of them: (the WAL's frames, whether the
        last was quick)."""
        for _ in range(CATCH_UP):
            started = time.monotonic()
            _busy, frames, _copied = _run_checkpoint(conn)
            if time.monotonic() - started < QUICK:
                return frames, True
        return frames, False

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if not self._failing:
            log.warning(
                "the sqlite store %s: a WAL checkpoint failed (%s: %s); commits go on, "
                "the WAL grows until a checkpoint succeeds",
                self.path,
                type(exc).__name__,
                exc,
            )
        self._failing = True


def _run_checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(busy, frames in the WAL, frames copied): sqlite's `wal_checkpoint` row.
    PASSIVE: copies what it can without waiting for any lock."""
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _wal_generation(wal: Path) -> int | None:
    """The WAL header's checkpoint sequence number (bytes 12-15, big-endian),
    which sqlite increments each time the WAL starts over; None before the
    file has a header."""
    try:
        with wal.open("rb") as file:
            header = file.read(16)
    except OSError:
        return None
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else None


def _fsync_failed(exc: Exception) -> bool:
    """Whether a checkpoint's `exc` is a failed fsync: ours of the db file
    (the only OSError the checkpoint can raise) or one of sqlite's."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) in _FSYNC_FAILED
    return isinstance(exc, OSError)


def _halt(path: Path, exc: Exception) -> NoReturn:
    """Stop the process now, the store left as it is on disk (see above):
    whatever the logging does (a log on a full disk), the exit comes."""
    try:
        log.critical(
            "the sqlite store %s: an fsync in a checkpoint failed (%s: %s). Pages the "
            "checkpoints copied into the db file may never reach the disk; the WAL still "
            "holds them. Stopping now, without closing the store, so that the WAL is kept: "
            "the next start copies all of it again. Check the disk first (dmesg).",
            path,
            type(exc).__name__,
            exc,
        )
        logger: logging.Logger | None = log
        while logger is not None:  # os._exit flushes nothing: the line must be out first
            for handler in logger.handlers:
                with contextlib.suppress(Exception):
                    handler.flush()
            logger = logger.parent
    finally:
        os._exit(EXIT_FSYNC_FAILED)
