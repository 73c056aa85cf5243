"""`memory://`: a volatile backend for --dev and tests.

It keeps only each key's modify index, which is all that conditions need;
the values live in the catalog's own state.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._exceptions import Conflict, StorageError
from .base import ApplyFn, Condition, Entry, Storage


class MemoryStorage(Storage):
    def __init__(self, url: str = "memory://") -> None:
        self._apply: ApplyFn | None = None
        self._index = 0
        self._commits = 0
        self._modified: dict[str, int] = {}

    async def open(self, apply: ApplyFn) -> None:
        self._apply = apply

    async def commit(self, ops: list[Entry], conditions: Sequence[Condition] = ()) -> int:
        if self._apply is None:
            raise StorageError("the memory store is closed")
        for condition in conditions:
            if not condition.holds(self._modified):
                raise Conflict(f"{condition.key} changed since it was read")
        self._index += 1
        self._commits += 1
        for op in ops:
            if op.value is None:
                self._modified.pop(op.key, None)
            else:
                self._modified[op.key] = self._index
        self._apply(self._index, ops)
        return self._index

    async def close(self) -> None:
        self._apply = None

    def statistics(self) -> dict[str, float]:
        return {"commits": self._commits, "index": self._index}
