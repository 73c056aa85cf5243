"""`memory://`: a volatile backend for --dev and tests."""

from __future__ import annotations

from .base import ApplyFn, Entry, Storage


class MemoryStorage(Storage):
    def __init__(self, url: str = "memory://") -> None:
        self._apply: ApplyFn | None = None
        self._index = 0
        self._commits = 0

    async def open(self, apply: ApplyFn) -> None:
        self._apply = apply

    async def commit(self, ops: list[Entry]) -> int:
        assert self._apply is not None, "commit() before open()"
        self._index += 1
        self._commits += 1
        self._apply(self._index, ops)
        return self._index

    async def close(self) -> None:
        self._apply = None

    def statistics(self) -> dict[str, float]:
        return {"commits": self._commits, "index": self._index}
