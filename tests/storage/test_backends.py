"""One suite for every local backend: the storage contract from storage/base.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from waypost import ConfigError, StorageError
from waypost.storage import Entry, open_storage


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
