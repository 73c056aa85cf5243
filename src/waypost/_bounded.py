"""A dict bounded by the bytes of what it holds, evicting the oldest first.

Used by the API's answer caches and the xDS encoder (mesh/encoding.py): a
top-level private module, so adapters of one layer share it. The API's
encoded-answer cache used to be bounded by entries (4,096): one
service with 900 KB of Meta, read with 4,096 distinct query strings, held
3.6 GB. Bounded by bytes, the same flood costs at most the budget, and an
answer too large to be worth a slot (over an eighth of the budget) is not
cached at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteBoundedCache(Generic[V]):
    def __init__(self, budget: int, size_of: Callable[[V], int]) -> None:
        self.budget = budget
        self.size_of = size_of
        self.bytes = 0
        self.evictions = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        hit = self._items.get(key)
        return hit[0] if hit is not None else None

    def put(self, key: Hashable, value: V) -> None:
        size = self.size_of(value) + 200  # the key and the bookkeeping cost something too
        self.pop(key)
        if size > self.budget // 8:
            return
        while self._items and self.bytes + size > self.budget:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old
            self.evictions += 1
        self._items[key] = (value, size)
        self.bytes += size

    def pop(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]

    def __len__(self) -> int:
        return len(self._items)
