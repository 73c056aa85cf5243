"""One suite for every local backend: the storage contract from storage/base.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import waypost
from waypost import ConfigError, StorageError, StoreUnavailable
from waypost._exceptions import Conflict, OutcomeUnknown, StoreBusy
from waypost.storage import Condition, Entry, Storage, open_storage, prefix_end
from waypost.storage import sqlite as sqlite_backend

from .conftest import Mirror


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/catalog.db"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[Entry], bool]] = []

    def __call__(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
        self.calls.append((index, entries, snapshot))


async def test_commit_applies_before_returning_with_increasing_indexes(url: str) -> None:
    store, seen = open_storage(url), Recorder()
    await store.open(seen)
    indexes = await asyncio.gather(*(store.commit([Entry(f"k{i}", b"v")]) for i in range(50)))
    assert sorted(indexes) == list(range(indexes[0], indexes[0] + 50))
    applied = [i for i, entries, _ in seen.calls if entries]  # (open may replay an empty store)
    assert applied == sorted(indexes)  # applied in index order
    await store.close()


async def test_sqlite_replays_after_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    store = open_storage(url)
    await store.open(Recorder())
    await store.commit([Entry("a", b"1"), Entry("b", b"2")])
    last = await store.commit([Entry("a", b"3"), Entry("b", None)])
    await store.close()
    again, seen = open_storage(url), Recorder()
    await again.open(seen)
    ((index, entries, _),) = seen.calls
    assert index == last
    assert [(e.key, e.value, e.create_index, e.modify_index) for e in entries] == [
        ("a", b"3", 1, 2)
    ]
    assert await again.commit([Entry("c", b"")]) == last + 1  # indexes keep increasing
    await again.close()


async def test_sqlite_values_are_stored_as_blobs_and_replay_as_bytes(tmp_path: Path) -> None:
    # The writer binds values as bytearrays (the sqlite3 module's cheap path):
    # what is stored and replayed must still be the exact bytes, as BLOBs.
    url = f"sqlite:///{tmp_path}/c.db"
    store = open_storage(url)
    await store.open(Recorder())
    values = {"e": b"", "z": b"\x00\xff\x80 not utf-8", "j": b'{"Name":"web"}'}
    await store.commit([Entry(k, v) for k, v in values.items()])
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as db:
        kinds = dict(db.execute("SELECT key, typeof(value) FROM kv").fetchall())
    assert kinds == {"e": "blob", "z": "blob", "j": "blob"}
    again, seen = open_storage(url), Recorder()
    await again.open(seen)
    replayed = {e.key: e.value for _, entries, _ in seen.calls for e in entries}
    assert replayed == values
    assert {type(v) for v in replayed.values()} == {bytes}
    await again.close()


async def test_group_commit_batches_concurrent_writes(tmp_path: Path) -> None:
    store = open_storage(f"sqlite:///{tmp_path}/c.db")
    await store.open(Recorder())
    await asyncio.gather(*(store.commit([Entry(f"k{i}", b"v")]) for i in range(200)))
    stats = store.statistics()
    assert stats["commits"] == 200
    assert stats["transactions"] < 200  # fewer fsyncs than writes
    await store.close()


@pytest.mark.parametrize("bad", ["sqlite://", "nosuch://x", "plainpath"])
def test_bad_store_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        open_storage(bad)


async def test_unwritable_sqlite_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = open_storage(f"sqlite:///{blocker}/sub/c.db")
    with pytest.raises(ConfigError, match="cannot open the sqlite store"):
        await store.open(Recorder())


async def test_sqlite_index_survives_restart_after_delete_only_commits(tmp_path: Path) -> None:
    """Found by the catalog state machine: a store whose commits only deleted
    keys reopened with index 0, so indexes went backwards."""
    url = f"sqlite:///{tmp_path}/c.db"
    store = open_storage(url)
    await store.open(Recorder())
    last = await store.commit([Entry("ghost", None)])
    await store.close()
    again, seen = open_storage(url), Recorder()
    await again.open(seen)
    assert max(i for i, _, _ in seen.calls) == last
    assert await again.commit([Entry("k", b"v")]) == last + 1
    await again.close()


async def test_sqlite_refuses_commits_once_closing(tmp_path: Path) -> None:
    store = open_storage(f"sqlite:///{tmp_path}/c.db")
    await store.open(Recorder())
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)  # close() has begun
    with pytest.raises(StorageError, match="closed"):
        await store.commit([Entry("k", b"v")])
    await closing


# -- conditions (every backend) ---------------------------------------------


async def until(probe: Callable[[], object], timeout: float = 2.0) -> None:
    """Poll `probe` on the loop until it is truthy; fail after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def stalled(store: Storage, url: str) -> AsyncIterator[asyncio.Future[int]]:
    """Make the commits issued inside the block queue up as one batch.

    For sqlite, a side connection holds the database's write lock, so the
    writer takes a first "gate" commit and then waits on it (as on a slow
    disk) while everything after it queues; leaving the block lets it go. The
    memory backend has no queue: the gate commit simply goes through. Yields
    the gate commit's future.
    """
    side = None
    if url.startswith("sqlite"):
        side = sqlite3.connect(sqlite_backend.path_from_url(url), isolation_level=None, timeout=0)
        side.execute("BEGIN IMMEDIATE")
    try:
        gate = asyncio.ensure_future(store.commit([Entry("gate", b"")]))
        await asyncio.sleep(0)  # queued
        await until(lambda: store.statistics().get("queued", 0) == 0)  # taken by the writer
        yield gate
    finally:
        if side is not None:
            side.execute("ROLLBACK")
            side.close()


async def test_exact_condition_is_the_modify_index_of_a_key(url: str, mirror: Mirror) -> None:
    store = open_storage(url)
    await store.open(mirror)
    first = await store.commit([Entry("a", b"1")])
    second = await store.commit([Entry("a", b"2")], [Condition("a", first)])
    assert mirror.keys["a"].value == b"2"
    with pytest.raises(Conflict, match="a"):
        await store.commit([Entry("a", b"3"), Entry("b", b"x")], [Condition("a", first)])
    assert mirror.keys["a"].value == b"2" and "b" not in mirror.keys  # nothing of it
    # A conflicting commit uses up no index.
    assert await store.commit([Entry("a", b"4")], [Condition("a", second)]) == second + 1
    await store.close()


async def test_one_condition_on_the_written_key_checks_and_writes_as_two_steps_did(
    tmp_path: Path, mirror: Mirror
) -> None:
    # sqlite checks a commit of one exact condition on its first put's key in
    # the same statement as the write: the outcome, the message, the indexes
    # stored and what is left must be those of a lookup, then a write.
    store = open_storage(f"sqlite:///{tmp_path}/c.db")
    await store.open(mirror)
    first = await store.commit([Entry("a", b"1")], [Condition("a", 0)])
    with pytest.raises(Conflict) as absent:
        await store.commit([Entry("a", b"x"), Entry("b", b"x")], [Condition("a", 0)])
    assert str(absent.value) == (
        f"a changed since it was read: modified at index {first}, expected it absent"
    )
    with pytest.raises(Conflict) as stale:
        await store.commit([Entry("a", b"x")], [Condition("a", first + 7)])
    assert str(stale.value) == (
        f"a changed since it was read: modified at index {first}, expected index {first + 7}"
    )
    with pytest.raises(Conflict, match="absent, expected index"):
        await store.commit([Entry("gone", b"x")], [Condition("gone", first)])
    second = await store.commit([Entry("a", b"2"), Entry("b", b"2")], [Condition("a", first)])
    assert second == first + 1  # the conflicts used up no index
    assert mirror.keys.keys() == {"a", "b"}  # nothing of the conflicting commits
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as db:
        rows = db.execute("SELECT key, value, create_index, modify_index FROM kv").fetchall()
    assert sorted(rows) == [("a", b"2", first, second), ("b", b"2", second, second)]


async def test_condition_index_zero_means_absent(url: str, mirror: Mirror) -> None:
    store = open_storage(url)
    await store.open(mirror)
    await store.commit([Entry("new", b"1")], [Condition("new", 0)])
    with pytest.raises(Conflict):
        await store.commit([Entry("new", b"2")], [Condition("new", 0)])
    await store.commit([Entry("new", None)])
    await store.commit([Entry("new", b"3")], [Condition("new", 0)])  # absent again
    assert mirror.keys["new"].value == b"3"
    await store.close()


async def test_range_condition_sees_changes_under_the_range_only(url: str, mirror: Mirror) -> None:
    store = open_storage(url)
    await store.open(mirror)
    end = prefix_end("svc/")  # "svc0"
    seen = await store.commit([Entry("svc/", b""), Entry("svc/a", b"")])
    # Keys just outside [svc/, svc0) do not count, however recent.
    await store.commit([Entry("svc", b""), Entry("svc0", b""), Entry("svc.", b"")])
    now = await store.commit([Entry("x", b"")], [Condition("svc/", seen, end)])
    changed = await store.commit([Entry("svc/b", b"")])
    with pytest.raises(Conflict):
        await store.commit([Entry("y", b"")], [Condition("svc/", now, end)])
    await store.commit([Entry("svc/", b"")])  # the first key of the range counts too
    with pytest.raises(Conflict):
        await store.commit([Entry("y", b"")], [Condition("svc/", changed, end)])
    last = await store.commit([Entry("svc/", None), Entry("svc/b", None)])
    # Keys deleted since do not count: only svc/a (modified at `seen`) is left.
    await store.commit([Entry("y", b"")], [Condition("svc/", seen, end)])
    assert "y" in mirror.keys and last > seen
    await store.close()


async def test_conflict_in_a_batch_comes_after_the_earlier_commits_are_applied(
    url: str, mirror: Mirror
) -> None:
    store = open_storage(url)
    await store.open(mirror)
    applied_at_conflict: list[set[str]] = []

    async def guarded() -> int:
        try:
            return await store.commit([Entry("second", b"")], [Condition("k", 0)])
        except Conflict:
            applied_at_conflict.append(set(mirror.keys))
            raise

    transactions = store.statistics().get("transactions", 0)
    async with stalled(store, url) as gate:
        first = asyncio.ensure_future(store.commit([Entry("k", b"")]))
        second = asyncio.ensure_future(guarded())
        # Conditions see what the earlier commits of the batch wrote, and not
        # what a conflicting one would have written.
        third = asyncio.ensure_future(store.commit([Entry("third", b"")], [Condition("second", 0)]))
        await asyncio.sleep(0)  # all three queued behind the gate
    await gate
    results = await asyncio.gather(first, second, third, return_exceptions=True)
    assert isinstance(results[1], Conflict)
    ((applied,),) = [applied_at_conflict]
    assert {"gate", "k"} <= applied and "second" not in applied  # k applied before the Conflict
    assert results[2] == results[0] + 1  # type: ignore[operator]
    assert set(mirror.keys) == {"gate", "k", "third"}
    if url.startswith("sqlite"):  # the gate's batch, then one batch of three
        assert store.statistics()["transactions"] == transactions + 2
    await store.close()


# -- sqlite: queue bound, deadlines, supervision -------------------------------


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/catalog.db"  # tmp_path starts with "/"


async def test_sqlite_refuses_commits_beyond_the_queue_bound(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "MAX_QUEUED", 3, raising=False)
    url = sqlite_url(tmp_path)
    store = open_storage(url)
    await store.open(mirror)
    async with stalled(store, url) as gate:
        queued = [asyncio.ensure_future(store.commit([Entry(f"q{i}", b"")])) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(StoreBusy, match="3 commits"):
            await asyncio.wait_for(store.commit([Entry("one-more", b"")]), 1)
    await asyncio.wait_for(asyncio.gather(gate, *queued), 2)
    assert set(mirror.keys) == {"gate", "q0", "q1", "q2"}
    await store.commit([Entry("room-again", b"")])
    await store.close()


async def test_sqlite_commit_deadline_queued_is_not_written_taken_is_unknown(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "COMMIT_TIMEOUT", 0.3, raising=False)
    url = sqlite_url(tmp_path)
    store = open_storage(url)
    await store.open(mirror)
    async with stalled(store, url) as gate:
        waiting = asyncio.ensure_future(store.commit([Entry("waiting", b"")]))
        both = asyncio.gather(gate, waiting, return_exceptions=True)
        taken, queued = await asyncio.wait_for(both, 2)
    # The gate was with the writer (stuck on the lock): it may yet be written.
    assert isinstance(taken, OutcomeUnknown)
    # The other one was still queued: definitely not written.
    assert isinstance(queued, StoreUnavailable) and not isinstance(queued, OutcomeUnknown)
    assert "not written" in str(queued)
    # The next commit gets the usual deadline: the writer may still be in
    # sqlite's busy handler (which sleeps between tries), then writes the
    # gate before it; 0.3 s for both failed once on a loaded CI machine.
    monkeypatch.setattr(sqlite_backend, "COMMIT_TIMEOUT", 10.0)
    after = await asyncio.wait_for(store.commit([Entry("after", b"")]), 10)
    # The writer finished the gate once the lock was free, and skipped the
    # expired one.
    assert set(mirror.keys) == {"gate", "after"}
    assert [i for i, entries, _ in mirror.calls if entries][-2:] == [after - 1, after]
    await store.close()


async def test_sqlite_writer_skips_a_commit_past_its_deadline_even_if_its_caller_is_late(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer itself never writes a commit past its deadline, even when the
    caller's loop is too busy to notice the deadline first."""
    monkeypatch.setattr(sqlite_backend, "COMMIT_TIMEOUT", 0.2, raising=False)
    url = sqlite_url(tmp_path)
    store = open_storage(url)
    await store.open(mirror)
    side = sqlite3.connect(
        sqlite_backend.path_from_url(url), isolation_level=None, timeout=0, check_same_thread=False
    )
    side.execute("BEGIN IMMEDIATE")  # the writer will be stuck on the gate commit
    gate = asyncio.ensure_future(store.commit([Entry("gate", b"")]))
    await asyncio.sleep(0)
    await until(lambda: store.statistics()["queued"] == 0)
    late = asyncio.ensure_future(store.commit([Entry("late", b"")]))
    await asyncio.sleep(0)  # queued
    release = threading.Timer(0.3, side.execute, ("ROLLBACK",))
    release.start()
    time.sleep(0.6)  # the loop is blocked past the deadline; the writer is freed meanwhile
    release.join()
    side.close()
    with pytest.raises(StoreUnavailable, match="not written"):
        await late
    await asyncio.gather(gate, return_exceptions=True)
    await store.commit([Entry("after", b"")])
    assert set(mirror.keys) == {"gate", "after"}
    await store.close()


def fail_writes_of(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the sqlite writer raise (not a sqlite3.Error) after writing a commit touching `key`."""
    real = sqlite_backend.SqliteStorage._write_ops

    def write_ops(conn: sqlite3.Connection, index: int, ops: list[Entry]) -> None:
        real(conn, index, ops)
        if any(op.key == key for op in ops):
            raise RuntimeError("injected failure")

    monkeypatch.setattr(sqlite_backend.SqliteStorage, "_write_ops", staticmethod(write_ops))


async def test_sqlite_writer_survives_an_unexpected_exception(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path)
    store = open_storage(url)
    await store.open(mirror)
    before = await store.commit([Entry("before", b"")])
    fail_writes_of("bad", monkeypatch)
    with pytest.raises(StorageError, match=r"RuntimeError.*injected failure"):
        await asyncio.wait_for(store.commit([Entry("bad", b""), Entry("before", None)]), 2)
    after = await asyncio.wait_for(store.commit([Entry("after", b"")]), 2)
    assert after == before + 1
    await store.close()
    again, replayed = open_storage(url), Mirror()
    await again.open(replayed)
    assert set(replayed.keys) == {"before", "after"}  # the failed batch was rolled back
    await again.close()


async def test_sqlite_a_bad_commit_fails_alone_not_the_batch_it_was_in(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path)
    store = open_storage(url)
    await store.open(mirror)
    fail_writes_of("bad", monkeypatch)
    async with stalled(store, url):
        commits = [store.commit([Entry(key, b"")]) for key in ("ok1", "bad", "ok2")]
        futures = [asyncio.ensure_future(c) for c in commits]
        await asyncio.sleep(0.05)  # all three queued behind the gate: one batch
    ok1, bad, ok2 = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
    assert isinstance(bad, StorageError) and "injected failure" in str(bad)
    assert isinstance(ok1, int) and isinstance(ok2, int) and ok1 < ok2
    assert {"ok1", "ok2"} <= set(mirror.keys) and "bad" not in mirror.keys
    await store.close()


async def test_sqlite_error_on_commit_itself_is_an_unknown_outcome(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error from COMMIT (a failed fsync) can come after the WAL frames
    reached the disk, so a restart may replay the batch: not a plain failure."""
    store = open_storage(sqlite_url(tmp_path))
    await store.open(mirror)

    def fail(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(
            sqlite_backend.SqliteStorage, "_end_transaction", staticmethod(fail), raising=False
        )
        with pytest.raises(OutcomeUnknown, match="disk I/O error"):
            await asyncio.wait_for(store.commit([Entry("k", b"")]), 2)
    assert "k" not in mirror.keys
    # Index 1 may be on disk with k: it is never handed out again.
    assert await asyncio.wait_for(store.commit([Entry("k2", b"")]), 2) == 2
    await store.close()


async def test_sqlite_refuses_commits_from_another_event_loop(tmp_path: Path) -> None:
    """apply() runs on the loop that opened the store, where the catalog lives."""
    store = open_storage(sqlite_url(tmp_path))
    await store.open(Mirror())
    with pytest.raises(StorageError, match="another event loop"):
        await asyncio.to_thread(asyncio.run, store.commit([Entry("k", b"")]))
    await store.close()


def test_sqlite_refuses_commits_from_a_later_loop_on_its_thread(tmp_path: Path) -> None:
    """The loop check without get_running_loop(): the opener's thread is not
    enough, the opener's loop must be the one running (its answers go there)."""
    store = open_storage(sqlite_url(tmp_path))
    asyncio.run(store.open(Mirror()))  # that loop ends; the store stays open

    async def commit_from_another_loop() -> None:
        with pytest.raises(StorageError, match="another event loop"):
            await asyncio.wait_for(store.commit([Entry("k", b"")]), 2)
        await store.close()

    asyncio.run(commit_from_another_loop())


def test_sqlite_takes_commits_from_its_loop_run_on_another_thread(tmp_path: Path) -> None:
    """The same loop is the same place for apply(), whichever thread runs it:
    the thread check is only the quick answer."""
    store = open_storage(sqlite_url(tmp_path))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(store.open(Mirror()))  # opened on this thread
    results: list[object] = []

    async def commit_and_close() -> None:
        try:
            results.append(await asyncio.wait_for(store.commit([Entry("k", b"v")]), 5))
        finally:
            await store.close()

    def other_thread() -> None:
        try:
            loop.run_until_complete(commit_and_close())
        except BaseException as exc:  # reported below, not lost in the thread
            results.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(20)
    loop.close()
    assert len(results) == 1 and isinstance(results[0], int), results


class FailingMirror(Mirror):
    def __call__(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
        if any(e.key == "poison" for e in entries):
            raise ValueError("cannot decode poison")
        super().__call__(index, entries, snapshot)


async def test_sqlite_apply_failure_fails_its_caller_and_later_commits_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = sqlite_url(tmp_path)
    store, catalog = open_storage(url), FailingMirror()
    await store.open(catalog)
    with pytest.raises(StorageError, match=r"stored at index 1 but could not be applied.*restart"):
        await asyncio.wait_for(store.commit([Entry("poison", b"")]), 2)
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and "cannot decode poison" in caplog.text
    assert await asyncio.wait_for(store.commit([Entry("fine", b"")]), 2) == 2
    await store.close()
    again, replayed = open_storage(url), Mirror()
    await again.open(replayed)
    assert set(replayed.keys) == {"poison", "fine"}  # it was durable all along
    await again.close()


_HOLDER = """
import asyncio, sys
from waypost.storage import open_storage

async def main():
    store = open_storage(sys.argv[1])
    await store.open(lambda index, entries, snapshot=False: None)
    print("open", flush=True)
    sys.stdin.readline()
    await store.close()

asyncio.run(main())
"""


async def test_sqlite_store_is_locked_against_a_second_agent(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(waypost.__file__).parents[1])}
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"open\n"
        store = open_storage(url)
        db = re.escape(f"{tmp_path}/catalog.db")
        message = rf"^the sqlite store {db} is in use by another waypost agent \(pid {holder.pid}\)"
        with pytest.raises(ConfigError, match=message):
            await store.open(Mirror())
        holder.stdin.close()
        assert await asyncio.wait_for(holder.wait(), 10) == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    await store.open(Mirror())  # free once the holder is gone
    with pytest.raises(
        ConfigError, match=rf"in use by another waypost agent \(pid {os.getpid()}\)"
    ):
        await open_storage(url).open(Mirror())  # a second store in this process too
    await store.close()
    third = open_storage(url)
    await third.open(Mirror())  # close() released it
    await third.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, to fill up. Needs root (as here and in CI)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a small tmpfs, and mounting one needs root")
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount command to make a small tmpfs to fill up")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:  # still open: a failed test
            subprocess.run(["umount", "--lazy", str(mnt)], check=True)


def fill(path: Path) -> None:
    """Write `path` until the file system has no byte left."""
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


async def test_sqlite_disk_full_fails_cleanly_and_recovers(tiny_disk: Path) -> None:
    url = f"sqlite://{tiny_disk}/catalog.db"
    store, catalog = open_storage(url), Mirror()
    await store.open(catalog)
    acked = {}
    for i in range(5):
        index = await store.commit([Entry(f"k{i}", b"v" * 100)])
        acked[f"k{i}"] = (b"v" * 100, index)
    fill(tiny_disk / "filler")
    big = b"x" * 64_000  # needs new pages
    with pytest.raises(StorageError, match=r"disk holding .*catalog.db is full"):
        await asyncio.wait_for(store.commit([Entry("big", big), Entry("k0", None)]), 5)
    assert "big" not in catalog.keys and "k0" in catalog.keys
    (tiny_disk / "filler").unlink()
    index = await asyncio.wait_for(store.commit([Entry("big", big), Entry("k0", None)]), 5)
    assert index == acked["k4"][1] + 1
    del acked["k0"]
    acked["big"] = (big, index)
    await store.close()

    again, replayed = open_storage(url), Mirror()
    await again.open(replayed)
    assert {k: (e.value, e.modify_index) for k, e in replayed.keys.items()} == acked
    assert await again.commit([Entry("next", b"")]) == index + 1
    await again.close()


async def test_sqlite_locked_by_another_process_fails_the_batch_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An sqlite3 shell holding the store's write lock: the batch waiting for
    it fails whole, as not written, once the busy timeout passes, not commit
    by commit (each waiting out the timeout again while the queue grows)."""
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT", 0.3)
    batches = []
    real = sqlite_backend.SqliteStorage._write_batch

    def counted(self: sqlite_backend.SqliteStorage, conn: object, batch: list[object]) -> None:
        batches.append(len(batch))
        real(self, conn, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_backend.SqliteStorage, "_write_batch", counted)
    url = sqlite_url(tmp_path)
    store, catalog = open_storage(url), Mirror()
    await store.open(catalog)
    shell = await asyncio.create_subprocess_exec(  # BEGIN IMMEDIATE, then wait for stdin
        sys.executable,
        "-c",
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.readline()",
        str(sqlite_backend.path_from_url(url)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert shell.stdout is not None and shell.stdin is not None
    assert await shell.stdout.readline() == b"locked\n"
    gate = asyncio.ensure_future(store.commit([Entry("gate", b"")]))
    await until(lambda: store.statistics()["queued"] == 0)  # the writer waits for the lock
    queued = [asyncio.ensure_future(store.commit([Entry(f"k{i}", b"")])) for i in range(20)]
    results = await asyncio.gather(gate, *queued, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert "locked by another process" in str(results[-1])
    assert sum(batches) == 21  # each commit tried once, in its batch, not again alone
    assert not catalog.keys
    shell.stdin.write(b"\n")  # the shell ends its transaction
    await shell.wait()
    assert await store.commit([Entry("after", b"")]) == 1  # no index used by the failures
    await store.close()


async def test_sqlite_indexes_never_repeat_across_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conflicts and failed batches use up no index, and the stored index
    always covers every index handed out."""
    url = sqlite_url(tmp_path)
    acked: list[int] = []

    async def session(work: Callable[[Storage], object]) -> None:
        store = open_storage(url)
        await store.open(Mirror())
        await work(store)  # type: ignore[misc]
        await store.close()

    async def conflicts_in_a_batch(store: Storage) -> None:
        acked.append(await store.commit([Entry("a", b"")]))
        async with stalled(store, url) as gate:
            batch = [
                store.commit([Entry("x", b"")], [Condition("a", 0)]),  # conflicts
                store.commit([Entry("b", b"")]),
                store.commit([Entry("y", b"")], [Condition("b", 0)]),  # conflicts
            ]
            futures = [asyncio.ensure_future(c) for c in batch]
            await asyncio.sleep(0)
        acked.append(await gate)
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert [type(r) for r in results] == [Conflict, int, Conflict]
        acked.append(results[1])  # type: ignore[arg-type]

    async def only_conflicts(store: Storage) -> None:
        with pytest.raises(Conflict):
            await store.commit([Entry("z", b"")], [Condition("a", 0)])

    async def a_failed_batch(store: Storage) -> None:
        def boom(conn: sqlite3.Connection, index: int, ops: list[Entry]) -> None:
            raise RuntimeError("injected")

        with monkeypatch.context() as patch:
            patch.setattr(sqlite_backend.SqliteStorage, "_write_ops", staticmethod(boom))
            with pytest.raises(StorageError):
                await asyncio.wait_for(store.commit([Entry("c", b"")]), 2)
        acked.append(await store.commit([Entry("a", None)]))

    async def one_more(store: Storage) -> None:
        acked.append(await store.commit([Entry("d", b"")]))

    for work in (
        conflicts_in_a_batch,
        one_more,
        only_conflicts,
        one_more,
        a_failed_batch,
        one_more,
    ):
        await session(work)
    assert acked == sorted(set(acked))  # strictly increasing


async def test_sqlite_replays_in_chunks_at_the_store_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay reads REPLAY_CHUNK rows per apply() call (so a million rows
    are never all alive at once), every call at the store's index, and every
    row arrives exactly once, the last partial chunk included."""
    url = f"sqlite:///{tmp_path}/c.db"
    store = open_storage(url)
    await store.open(Recorder())
    await store.commit([Entry(f"k{i:02}", str(i).encode()) for i in range(23)])
    last = await store.commit([Entry("k00", b"again")])
    await store.close()
    monkeypatch.setattr(sqlite_backend, "REPLAY_CHUNK", 5)
    again, seen = open_storage(url), Recorder()
    await again.open(seen)
    assert [len(entries) for _, entries, _ in seen.calls] == [5, 5, 5, 5, 3]
    assert {index for index, _, _ in seen.calls} == {last}
    replayed = {
        e.key: (e.value, e.create_index, e.modify_index) for _, es, _ in seen.calls for e in es
    }
    assert replayed == {
        f"k{i:02}": (b"again", 1, 2) if i == 0 else (str(i).encode(), 1, 1) for i in range(23)
    }
    await again.close()
