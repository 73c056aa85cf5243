"""Encoded answers, cached until the catalog data they were read from changes.

An `Entry` holds the responses for one (name, type, size limit, RD, EDNS)
key as a few *variants*: the same record set in different orders, each
already truncated to the size limit and encoded. A query costs a dict lookup,
a counter step and a join of four byte strings; shuffling costs nothing per
query because the orders were drawn when the entry was built:

- up to `VARIANTS` records: the n rotations of one random order, served round
  robin, so every record comes first equally often (clients that take the
  first address spread evenly) and, when truncated, every record is left out
  equally often;
- more records: `VARIANTS` independent random orders, and every `VARIANTS`
  queries one of them is redrawn, so over time every record leads.

Variants are assembled lazily, on the query that first needs them, so a
cache miss (the first query after a change) pays for one, not sixteen.

Entries are indexed by the catalog topics they read; the catalog's change
listener drops them (`invalidate`). A second map keyed by the raw query bytes
after the ID lets a repeated query skip parsing entirely; its values point
at entries, and a dropped entry is marked dead so stale raw hits fall through.
Both maps are bounded and evict oldest first.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Final

from ..catalog.watch import Topic
from . import wire
from .answers import RecordSet

VARIANTS: Final = 16
MAX_ENTRIES: Final = 4096
MAX_RAW: Final = 16384
MAX_NEGATIVE: Final = 2048

Variant = tuple[bytes, bytes]  # header after the ID, everything after the question


class Entry:
    __slots__ = (
        "_count",
        "_flags",
        "_limit",
        "_max_answers",
        "_order",
        "_qsize",
        "_records",
        "_redraws",
        "alive",
        "key",
        "positive",
        "topics",
        "variants",
    )

    def __init__(
        self,
        key: Hashable,
        records: RecordSet,
        flags: int,
        limit: int,
        qsize: int,
        max_answers: tuple[int, bool] = (0, False),
    ) -> None:
        self.key = key
        self.topics = records.topics
        self.alive = True
        self.positive = int(bool(records.answers))  # which eviction budget it counts against
        self._records = records
        self._flags = flags
        self._limit = limit
        self._qsize = qsize
        self._max_answers = max_answers  # (at most this many answers (0: any), TC if cut)
        self._count = 0
        self._redraws = 0
        n = len(records.answers)
        self._order = random.sample(range(n), n) if records.shuffle else list(range(n))
        slots = 1 if not records.shuffle or n <= 1 else min(n, VARIANTS)
        # Variants are assembled on first use: a miss costs one, not sixteen.
        self.variants: list[Variant | None] = [None] * slots

    def next(self) -> Variant:
        """The next response (as header and tail), round robin over the variants."""
        count = self._count
        self._count = count + 1
        slot = count % len(self.variants)
        variant = self.variants[slot]
        if variant is None:
            variant = self.variants[slot] = self._assemble(self._order_for(slot))
        elif slot == 0 and len(self.variants) == VARIANTS < len(self._order):
            self._redraw()  # only shuffled entries have variants to redraw
        return variant

    def _order_for(self, slot: int) -> list[int]:
        """Slot i of n <= VARIANTS records: rotation i of one random order (each
        record leads once per round); of more records: a fresh random order."""
        order = self._order
        if len(order) <= VARIANTS:
            return order[slot:] + order[:slot]
        return random.sample(order, len(order))

    def _redraw(self) -> None:
        """Once per round over the variants, forget one so it is redrawn on next use."""
        self._redraws += 1
        self.variants[self._redraws % len(self.variants)] = None

    def _assemble(self, order: Iterable[int]) -> Variant:
        """One response: answers in `order`, each with its additional records,
        while they fit the limit; TC set when some answer did not."""
        records = self._records
        size = 12 + self._qsize + len(records.authority) + (11 if self._flags & _EDNS else 0)
        answers: list[bytes] = []
        additional: list[bytes] = []
        seen: set[bytes] = set()
        truncated = False
        most, cut_sets_tc = self._max_answers
        for i in order:
            if most and len(answers) >= most:
                truncated = truncated or cut_sets_tc
                break
            record, extra = records.answers[i]
            new = [a for a in extra if a not in seen]
            cost = len(record) + sum(map(len, new))
            if size + cost > self._limit:
                truncated = True
                break
            answers.append(record)
            additional += new
            seen.update(new)
            size += cost
        for record in records.extra:
            if size + len(record) <= self._limit:
                additional.append(record)
                size += len(record)
        return self._encode(answers, additional, truncated)

    def _encode(self, answers: list[bytes], additional: list[bytes], truncated: bool) -> Variant:
        records = self._records
        edns = bool(self._flags & _EDNS)
        flags = (self._flags & ~_EDNS) | (wire.TC if truncated else 0) | records.rcode
        counts = wire.header(
            flags, 1, len(answers), 1 if records.authority else 0, len(additional) + edns
        )
        tail = b"".join((*answers, records.authority, *additional, wire.opt_rr() if edns else b""))
        return counts, tail


_EDNS: Final = 0x10000  # carried in Entry flags beside the 16 header bits: answer with an OPT


def response_flags(rd: int, edns: bool, recursion_available: bool) -> int:
    """The header flags an entry's responses carry (rcode and TC are added per response)."""
    flags = wire.QR | wire.AA | rd | (wire.RA if recursion_available else 0)
    return flags | (_EDNS if edns else 0)


class AnswerCache:
    """Entries by key, raw query bytes to entries, and topics to keys.

    Answers with records and negative answers (NXDOMAIN, NODATA) are evicted
    separately, each oldest first within its own budget: a flood of random
    names fills the negative budget and cannot push out the answers real
    clients keep asking for.
    """

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_raw: int = MAX_RAW,
        max_negative: int = MAX_NEGATIVE,
    ) -> None:
        self.entries: dict[Hashable, Entry] = {}
        self.raw: dict[bytes, tuple[Entry, int]] = {}
        self._by_topic: dict[Topic, set[Hashable]] = {}
        # insertion order of keys, per kind: [negative, positive]
        self._order: tuple[OrderedDict[Hashable, None], ...] = (OrderedDict(), OrderedDict())
        self._raw_order: tuple[OrderedDict[bytes, None], ...] = (OrderedDict(), OrderedDict())
        self._budget = (max_negative, max_entries)
        self._raw_budget = (max_negative, max_raw)
        self.invalidations = 0
        self.evictions = 0

    def put(self, entry: Entry) -> None:
        self._drop(entry.key)
        order = self._order[entry.positive]
        if len(order) >= self._budget[entry.positive]:
            self.evictions += 1
            self._drop(order.popitem(last=False)[0], ordered=False)
        self.entries[entry.key] = entry
        order[entry.key] = None
        for topic in entry.topics:
            self._by_topic.setdefault(topic, set()).add(entry.key)

    def remember_raw(self, raw: bytes, entry: Entry, qend: int) -> None:
        self._forget_raw(raw)
        order = self._raw_order[entry.positive]
        if len(order) >= self._raw_budget[entry.positive]:
            self.raw.pop(order.popitem(last=False)[0], None)
        self.raw[raw] = (entry, qend)
        order[raw] = None

    def _forget_raw(self, raw: bytes) -> None:
        hit = self.raw.pop(raw, None)
        if hit is not None:
            del self._raw_order[hit[0].positive][raw]

    def invalidate(self, topics: Iterable[Topic], entries: object = None) -> None:
        """The catalog changed these topics: drop every entry read from them.
        (A catalog listener: `entries`, the changed keys, are not needed here.)"""
        for topic in topics:
            for key in self._by_topic.pop(topic, ()):
                self.invalidations += 1
                self._drop(key)

    def clear(self) -> None:
        for key in list(self.entries):
            self._drop(key)
        self.raw.clear()
        for order in self._raw_order:
            order.clear()

    def _drop(self, key: Hashable, ordered: bool = True) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        entry.alive = False
        if ordered:
            del self._order[entry.positive][key]
        for topic in entry.topics:
            keys = self._by_topic.get(topic)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_topic[topic]

    def statistics(self) -> dict[str, float]:
        return {
            "cache_entries": len(self.entries),
            "cache_negative_entries": len(self._order[0]),
            "cache_raw_entries": len(self.raw),
            "cache_invalidations": self.invalidations,
            "cache_evictions": self.evictions,
        }
