"""A dict bounded by the bytes of what it holds, evicting the least recently
put or touched first.

Used by the API's answer caches and the xDS encoder (mesh/encoding.py): a
top-level private module, so adapters of one layer share it. The API's
encoded-answer cache used to be bounded by entries (4,096): one
service with 900 KB of Meta, read with 4,096 distinct query strings, held
3.6 GB. Bounded by bytes, the same flood costs at most the budget, and an
answer too large to be worth a slot (over an eighth of the budget) is not
cached at all.

`get` is a peek: it does not refresh the entry, so a cache whose users only
`get` evicts in insertion order (the API's answer caches: an answer is put
again whenever it changes). A user for which what is read over and over must
stay (the xDS encoder) calls `touch(key)` after a hit: that entry is then the
last to go. Both are the OrderedDict's own methods (no Python frame), since
the encoder asks for every resource of every node at every push.
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
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        # A hit is the dict's own get, no Python frame: the xDS encoder asks
        # for every resource of every node at every push.
        self.get: Callable[[Hashable], V | None] = self._items.get
        # Marks a present key as just used (KeyError if absent): moves it to
        # the end that is evicted last.
        self.touch: Callable[[Hashable], None] = self._items.move_to_end

    def put(self, key: Hashable, value: V) -> None:
        size = self.size_of(value) + 200  # the key and the bookkeeping cost something too
        self.pop(key)
        if size > self.budget // 8:
            return
        while self._items and self.bytes + size > self.budget:
            old, _ = self._items.popitem(last=False)
            self.bytes -= self._sizes.pop(old)
            self.evictions += 1
        self._items[key] = value
        self._sizes[key] = size
        self.bytes += size

    def pop(self, key: Hashable) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            del self._items[key]
            self.bytes -= size

    def __len__(self) -> int:
        return len(self._items)
