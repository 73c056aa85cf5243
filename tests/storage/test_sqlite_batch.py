"""The sqlite writer's one-statement batch (`_sqlite_conditions.put_all_if`).

A batch whose commits are all one put on the condition that its key is
absent (new registrations), or all one put on the condition that its key is
at an index (re-registrations, TTL updates), is written by one
`executemany`; anything else, or any failed condition, goes commit by
commit. Here each batch is written twice, on two stores with the same
history: once queued together (one batch) and once commit by commit (each
awaited alone, so each is a batch of one, never the shortcut). The outcomes
(indexes, Conflict messages), what the catalog was given, and every stored
row must be the same; a spy on `put_all_if` says which path the batch took.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from waypost._exceptions import Conflict
from waypost.storage import Condition, Entry, _sqlite_conditions, open_storage
from waypost.storage import sqlite as sqlite_backend

from .conftest import Mirror
from .test_backends import stalled

Commit = tuple[list[Entry], list[Condition]]

SEED = [("s/a", b"1"), ("s/b", b"2"), ("s/c", b"3")]  # indexes 1, 2, 3


def put(key: str, value: bytes, at: int) -> Commit:
    return [Entry(key, value)], [Condition(key, at)]


BATCHES: dict[str, tuple[list[Commit], bool]] = {
    "new keys": ([put(f"s/n{i}", b"v%d" % i, 0) for i in range(5)], True),
    "re-puts at their indexes": ([put(k, b"w", i + 1) for i, (k, _) in enumerate(SEED)], True),
    "one key already there": (
        [put("s/n0", b"x", 0), put("s/b", b"x", 0), put("s/n1", b"y", 0)],
        False,
    ),
    "one stale index": ([put("s/a", b"x", 1), put("s/b", b"x", 1), put("s/c", b"x", 3)], False),
    "the same new key twice": ([put("s/d", b"1", 0), put("s/d", b"2", 0)], False),
    "seven new keys (statements of 4, 2, 1 rows)": (
        [put(f"s/n{i}", b"v%d" % i, 0) for i in range(7)],
        True,
    ),
    "six new keys, the last already there (a later statement fails)": (
        [*(put(f"s/n{i}", b"v", 0) for i in range(5)), put("s/a", b"x", 0)],
        False,
    ),
    "the last re-put stale": (
        [put("s/a", b"x", 1), put("s/b", b"x", 2), put("s/c", b"x", 1)],
        False,
    ),
    "the same re-put twice": ([put("s/a", b"x", 1), put("s/a", b"y", 1)], False),
    "puts of both kinds": ([put("s/n0", b"x", 0), put("s/a", b"x", 1)], False),
    "a commit of two puts": (
        [
            put("s/n0", b"x", 0),
            ([Entry("s/n1", b"y"), Entry("s/n2", b"z")], [Condition("s/n1", 0)]),
        ],
        False,
    ),
}


async def _written(tmp: Path, batch: list[Commit], together: bool) -> tuple[Any, ...]:
    mirror = Mirror()
    store = open_storage(f"sqlite://{tmp}/catalog.db")
    await store.open(mirror)
    for key, value in SEED:
        await store.commit([Entry(key, value)])
    url = f"sqlite://{tmp}/catalog.db"
    outcomes: list[object] = []
    if together:
        async with stalled(store, url) as gate:
            futures = [asyncio.ensure_future(store.commit(*c)) for c in batch]
            await asyncio.sleep(0)
        outcomes.append(await gate)
        outcomes += await asyncio.gather(*futures, return_exceptions=True)
    else:
        outcomes.append(await store.commit([Entry("gate", b"")]))
        for commit in batch:
            try:
                outcomes.append(await store.commit(*commit))
            except Conflict as exc:
                outcomes.append(exc)
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp / "catalog.db")) as db:
        rows = db.execute("SELECT key, value, create_index, modify_index FROM kv").fetchall()
    shown = [(type(o).__name__, str(o)) if isinstance(o, Exception) else o for o in outcomes]
    given = {k: (e.value, e.modify_index) for k, e in mirror.keys.items()}
    return shown, given, sorted(rows)


# An sqlite before 3.33 (no UPDATE .. FROM) writes re-puts a step a row.
OLD_SQLITE = ["re-puts at their indexes", "the last re-put stale", "the same re-put twice"]


@pytest.mark.parametrize(
    ("name", "update_from"),
    [(name, True) for name in sorted(BATCHES)] + [(name, False) for name in OLD_SQLITE],
)
async def test_a_batch_is_written_as_its_commits_one_by_one(
    name: str, update_from: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch, shortcut = BATCHES[name]
    monkeypatch.setattr(_sqlite_conditions, "UPDATE_FROM", update_from)
    taken: list[bool] = []

    def spy(cursor: sqlite3.Cursor, first: int, pending: Any) -> bool:
        taken.append(_sqlite_conditions.put_all_if(cursor, first, pending))
        return taken[-1]

    monkeypatch.setattr(sqlite_backend, "put_all_if", spy)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    together = await _written(tmp_path / "a", batch, together=True)
    assert taken == [shortcut]  # one batch of them all, and the path it took
    alone = await _written(tmp_path / "b", batch, together=False)
    assert taken == [shortcut]  # batches of one never take it
    assert together == alone


@pytest.mark.parametrize("at", [0, 1], ids=["new keys", "re-puts"])
def test_a_batch_takes_a_few_statements_not_one_step_a_row(at: int) -> None:
    """22 commits go in statements of 16, 4 and 2 rows: the sqlite3 module
    releases and retakes the GIL around every step, so `executemany` (a step
    a row) would hand it to the event loop and back 22 times."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(sqlite_backend._SCHEMA)
    keys = [f"s/k{i}" for i in range(22)]
    if at:
        db.executemany("INSERT INTO kv VALUES (?, x'', 1, 1)", [(k,) for k in keys])
    steps: list[str] = []
    db.set_trace_callback(steps.append)
    cursor = db.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    batch = [Pending(*put(k, b"v", at)) for k in keys]
    assert _sqlite_conditions.put_all_if(cursor, 10, batch)
    cursor.execute("COMMIT")
    assert [s.count("'s/k") for s in steps[1:-1]] == [16, 4, 2]  # the expanded statements
    rows = db.execute("SELECT key, value, create_index, modify_index FROM kv").fetchall()
    assert sorted(rows) == sorted(
        (k, b"v", 1 if at else 10 + i, 10 + i) for i, k in enumerate(keys)
    )


class Pending:
    def __init__(self, ops: list[Entry], conditions: list[Condition]) -> None:
        self.ops, self.conditions = ops, conditions
