"""The sqlite writer's statements for a commit's conditions and writes (storage/sqlite.py).

Each condition is checked inside the batch's transaction just before its
commit's writes, so it sees the stored state with every earlier commit of
the batch (issue 8: checked by the store, in commit order). An exact
condition ("key K is at modify index I", 0: absent) is one primary-key
lookup; a range condition one scan that stops at the first newer key.

The common commit, one record written under the one condition that it is
still as read (a registration, a TTL update), is checked and written by one
statement: `INSERT ... ON CONFLICT DO NOTHING` when the key must be absent,
`UPDATE ... WHERE modify_index = I` when it must be at I. The statement
changes a row exactly when the condition holds, and changes nothing when it
does not, as the separate lookup and write did. A statement through the
sqlite3 module costs ~10k instructions, most of it the module's own (its
statement cache, binding, five GIL hand-offs): one of two per commit. A
batch made only of such commits, all of one kind, goes in a few multi-row
statements (`put_all_if`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final, Protocol

from .._exceptions import Conflict
from .base import Condition, Entry

UPSERT: Final = (
    "INSERT INTO kv (key, value, create_index, modify_index) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, modify_index = excluded.modify_index"
)
_INSERT_IF_ABSENT: Final = (
    "INSERT INTO kv (key, value, create_index, modify_index) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO NOTHING"
)
_UPDATE_IF_AT: Final = (
    "UPDATE kv SET value = ?, modify_index = ? WHERE key = ? AND modify_index = ?"
)
_MODIFY_INDEX: Final = "SELECT modify_index FROM kv WHERE key = ?"
_NEWER_IN_RANGE: Final = (
    "SELECT key, modify_index FROM kv WHERE key >= ? AND key < ? AND modify_index > ? LIMIT 1"
)


def blob(value: bytes) -> bytearray:
    """A value as the writer binds it. A bytearray, not the bytes: the sqlite3
    module binds exact str/int/float/bytearray directly but runs any other
    type (bytes too) through its adapter protocol, whose failed
    `__adapt__`/`__conform__` lookups format and drop two AttributeErrors
    (~3k instructions per value). Stored alike: both are bound as the same
    BLOB and read back as bytes."""
    return bytearray(value)


def fusable(ops: Sequence[Entry], conditions: Sequence[Condition]) -> bool:
    """Whether the commit is one exact condition on the key its first op puts."""
    return (
        len(conditions) == 1
        and not conditions[0].range_end
        and bool(ops)
        and ops[0].key == conditions[0].key
        and ops[0].value is not None
    )


def put_if(cursor: sqlite3.Cursor, index: int, op: Entry, condition: Condition) -> Conflict | None:
    """Write `op` at `index` if `condition` (on its key) holds, else its Conflict."""
    assert op.value is not None  # fusable() admits puts only
    if condition.index == 0:
        cursor.execute(_INSERT_IF_ABSENT, (op.key, blob(op.value), index, index))
    else:
        cursor.execute(_UPDATE_IF_AT, (blob(op.value), index, op.key, condition.index))
    if cursor.rowcount == 1:
        return None
    conflict = violated(cursor, [condition])  # the stored index, for the message
    if conflict is None:  # cannot be: fail the batch rather than answer an unwritten commit
        raise sqlite3.DatabaseError(f"{op.key}: conditional write changed no row")
    return conflict


class Commit(Protocol):
    """What `put_all_if` reads of a queued commit (sqlite.py's _Pending)."""

    ops: list[Entry]
    conditions: Sequence[Condition]


def put_all_if(cursor: sqlite3.Cursor, first_index: int, batch: Sequence[Commit]) -> bool:
    """Write a batch of fusable commits of one kind (each one put on the
    condition that its key is absent, or each on the condition that its key is
    at an index), commit i at `first_index + i`: True if every condition held
    and so every row was written, as the statements one by one (`put_if`)
    would have. False, with nothing of the batch left (the transaction rolled
    back and begun again), when a commit is of another shape or any condition
    failed: the caller then goes commit by commit, and finds each outcome as
    before.

    The rows go in multi-row statements (`_chunks`), not one `executemany`:
    that is a step and a reset per row, each through the sqlite3 module's
    per-step work and a release and retake of the GIL (a futex wait whenever
    the event loop holds it); a statement of many rows is one step (the
    writer's instructions per commit 27.0k -> 25.0k at 24 commits a batch,
    bench/agent/writer_batch.py). Rows of distinct keys do not depend on
    each other, so one statement changes exactly the rows that one by one
    would; a key twice in a batch changes fewer rows than the batch has
    (`INSERT`: the second conflicts with the first; `UPDATE .. FROM`: one
    source row per target row), so that batch goes one by one too."""
    rows: list[object] = []
    absent: bool | None = None
    index = first_index
    for commit in batch:
        ops, conditions = commit.ops, commit.conditions
        if len(ops) != 1 or not fusable(ops, conditions):
            return False
        op, condition = ops[0], conditions[0]
        if absent is None:
            absent = condition.index == 0
        elif absent != (condition.index == 0):
            return False  # a mix of both statements: one by one
        value = bytearray(op.value or b"")  # blob(): fusable() admits puts only
        if absent:
            rows += (op.key, value, index, index)
        else:
            rows += (op.key, value, index, condition.index)
        index += 1
    if _wrote_all(cursor, bool(absent), rows):
        return True
    cursor.execute("ROLLBACK")  # a condition failed: which one, the one-by-one path says
    cursor.execute("BEGIN IMMEDIATE")
    return False


def _wrote_all(cursor: sqlite3.Cursor, absent: bool, rows: list[object]) -> bool:
    """Put `rows` (key, value, index, condition index: four values a row)
    each on its condition: True if every one changed a row."""
    count = len(rows) // 4
    if not absent and not UPDATE_FROM:  # an sqlite before 3.33: one step a row
        at = [(rows[i + 1], rows[i + 2], rows[i], rows[i + 3]) for i in range(0, len(rows), 4)]
        cursor.executemany(_UPDATE_IF_AT, at)
        return cursor.rowcount == count
    done = 0
    for size in _chunks(count):
        cursor.execute(_many(absent, size), rows[4 * done : 4 * (done + size)])
        if cursor.rowcount != size:
            return False
        done += size
    return True


#: Whether this sqlite has `UPDATE .. FROM` (3.33, 2020); multi-row VALUES is 3.7.11.
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
#: Most rows in one statement: 4 values each, under sqlite's 32,766 variables.
_MOST_ROWS: Final = 256


def _chunks(rows: int) -> list[int]:
    """Statement sizes for `rows` rows: powers of two, largest first, so that
    a few texts per kind (at most 9 below `_MOST_ROWS`) stay in the sqlite3
    module's statement cache whatever the batch sizes are."""
    sizes = []
    while rows:
        size = min(_MOST_ROWS, 1 << (rows.bit_length() - 1))
        sizes.append(size)
        rows -= size
    return sizes


_MANY: dict[tuple[bool, int], str] = {}


def _many(absent: bool, size: int) -> str:
    """The statement that puts `size` rows (key, value, index, condition
    index each) if each key is absent (`absent`) or at its condition index."""
    text = _MANY.get((absent, size))
    if text is None:
        values = ", ".join(["(?, ?, ?, ?)"] * size)
        if absent:  # create and modify index are both the commit's
            text = (
                "INSERT INTO kv (key, value, create_index, modify_index) "
                f"VALUES {values} ON CONFLICT(key) DO NOTHING"
            )
        else:  # VALUES' columns are column1..column4
            text = (
                "UPDATE kv SET value = v.column2, modify_index = v.column3 "
                f"FROM (VALUES {values}) AS v "
                "WHERE kv.key = v.column1 AND kv.modify_index = v.column4"
            )
        _MANY[absent, size] = text
    return text


def violated(cursor: sqlite3.Cursor, conditions: Sequence[Condition]) -> Conflict | None:
    """The first condition that does not hold against the stored state, as a Conflict."""
    for condition in conditions:
        if not condition.range_end:
            row = cursor.execute(_MODIFY_INDEX, (condition.key,)).fetchone()
            found = row[0] if row else 0
            if found != condition.index:
                now = f"modified at index {found}" if found else "absent"
                wanted = f"index {condition.index}" if condition.index else "it absent"
                return Conflict(
                    f"{condition.key} changed since it was read: {now}, expected {wanted}"
                )
        else:
            row = cursor.execute(
                _NEWER_IN_RANGE, (condition.key, condition.range_end, condition.index)
            ).fetchone()
            if row is not None:
                return Conflict(
                    f"{row[0]} (under {condition.key}) changed since it was read at index "
                    f"{condition.index}: modified at index {row[1]}"
                )
    return None
