"""The KV store's records and in-memory table, beside the service catalog.

Keys live in the storage backend as `k/<key>`: the user's key unescaped, so
that a prefix of keys is a prefix of storage keys (a range condition guards
"nothing under this prefix changed", and etcd's ranges line up). `State.apply`
hands every `k/` entry to `KvTable.apply`; nothing else changes the table.

Blocking reads wake per key or per prefix: a change to `a/b/c` fires the
topic of that key and the prefix topics of "", "a", "a/", "a/b", ... (one
dict lookup each, only topics someone waits on hold a future). The index a
read reports is computed from what it covers: the highest modify index of its
keys, or of a key deleted there since (a tombstone), so a watcher of `a/` is
never woken by a change to `b/`. Tombstones are bounded: past
`MAX_TOMBSTONES` the oldest half go and their highest index becomes a floor
under every KV read (it moves once, like Consul's tombstone reaping).

Lock delay (Consul's guard against a lock changing hands while its old holder
still thinks it holds it) is kept in memory by every agent: when a batch
deletes a session, the keys it held may not be acquired for its LockDelay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

import msgspec
from sortedcontainers import SortedDict

from ..storage import Entry
from .watch import Topic

KV_PREFIX: Final = "k/"
MAX_TOMBSTONES: Final = 50_000
#: Longest lock delay, seconds (Consul's structs.MaxLockDelay).
MAX_LOCK_DELAY: Final = 60.0


class KvEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One key: its value and the lock on it. Indexes are set when applied."""

    key: str
    value: bytes = b""
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0


class _Stored(msgspec.Struct, frozen=True, omit_defaults=True, array_like=True):
    """What a `k/` value holds (the key is the storage key)."""

    value: bytes = b""
    flags: int = 0
    session: str = ""
    lock_index: int = 0


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(_Stored)


def storage_key(key: str) -> str:
    return KV_PREFIX + key


def encode(entry: KvEntry) -> Entry:
    stored = _Stored(entry.value, entry.flags, entry.session, entry.lock_index)
    return Entry(storage_key(entry.key), _ENCODER.encode(stored))


def key_topic(key: str) -> Topic:
    return ("kv", key)


def prefix_topic(prefix: str) -> Topic:
    return ("kvp", prefix)


def topics_of(key: str) -> list[Topic]:
    """Every topic a change to `key` fires: its own and each of its prefixes'."""
    return [key_topic(key), *(prefix_topic(key[:n]) for n in range(len(key) + 1))]


class KvTable:
    def __init__(self) -> None:
        self.entries: SortedDict[str, KvEntry] = SortedDict()
        self.tombstones: SortedDict[str, int] = SortedDict()  # deleted key -> index
        self.floor = 0  # highest index of reaped tombstones
        self.held: dict[str, set[str]] = {}  # session -> keys it holds
        self.delays: dict[str, float] = {}  # key -> monotonic time its lock delay ends

    # -- changes -----------------------------------------------------------

    def apply(self, index: int, entry: Entry, touched: set[Topic]) -> None:
        key = entry.key[len(KV_PREFIX) :]
        old = self.entries.get(key)
        if old is not None:
            self._unhold(old)
        if entry.value is None:
            if old is not None:
                del self.entries[key]
                self._bury(key, entry.modify_index or index)
        else:
            stored = _DECODER.decode(entry.value)
            created = entry.create_index or (old.create_index if old is not None else index)
            new = KvEntry(
                key,
                stored.value,
                stored.flags,
                stored.session,
                stored.lock_index,
                created,
                entry.modify_index or index,
            )
            self.entries[key] = new
            self.tombstones.pop(key, None)
            if new.session:
                self.held.setdefault(new.session, set()).add(key)
        touched.update(topics_of(key))

    def _unhold(self, old: KvEntry) -> None:
        if old.session and (keys := self.held.get(old.session)) is not None:
            keys.discard(old.key)
            if not keys:
                del self.held[old.session]

    def _bury(self, key: str, index: int) -> None:
        self.tombstones[key] = index
        if len(self.tombstones) > MAX_TOMBSTONES:
            oldest = sorted(self.tombstones.items(), key=lambda kv: kv[1])[: MAX_TOMBSTONES // 2]
            for dead, at in oldest:
                del self.tombstones[dead]
                self.floor = max(self.floor, at)

    def start_lock_delay(self, session: str, delay: float) -> None:
        """The session is going: its keys may not be acquired for `delay`
        seconds, at most MAX_LOCK_DELAY (Consul caps it too; the session keeps
        what it was given)."""
        if delay <= 0:
            return
        until = time.monotonic() + min(delay, MAX_LOCK_DELAY)
        for key in self.held.get(session, ()):
            self.delays[key] = until

    def lock_delay_left(self, key: str) -> float:
        until = self.delays.get(key)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self.delays[key]
            return 0.0
        return left

    def storage_keys(self) -> Iterator[str]:
        return (storage_key(k) for k in self.entries)

    # -- reads (named queries) ---------------------------------------------

    def get(self, key: str) -> KvEntry | None:
        return self.entries.get(key)

    def under(self, prefix: str) -> list[KvEntry]:
        """Every entry whose key starts with `prefix`, in key order."""
        return [self.entries[k] for k in self._keys_under(prefix)]

    def keys(self, prefix: str, separator: str = "") -> list[str]:
        """Keys under `prefix`; with a separator, cut after its first
        occurrence past the prefix, once each (Consul's `?keys&separator=`)."""
        found: list[str] = []
        for key in self._keys_under(prefix):
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[: cut + len(separator)]
                    if found and found[-1] == key:
                        continue
            found.append(key)
        return found

    def held_by(self, session: str) -> list[str]:
        return sorted(self.held.get(session, ()))

    def key_index(self, key: str) -> int:
        entry = self.entries.get(key)
        if entry is not None:
            return entry.modify_index
        return max(self.tombstones.get(key, 0), self.floor)

    def prefix_index(self, prefix: str) -> int:
        best = self.floor
        for key in self._keys_under(prefix):
            best = max(best, self.entries[key].modify_index)
        for key in _irange_prefix(self.tombstones, prefix):
            best = max(best, self.tombstones[key])
        return best

    def _keys_under(self, prefix: str) -> Iterator[str]:
        return _irange_prefix(self.entries, prefix)

    def statistics(self) -> dict[str, float]:
        return {"kv_keys": len(self.entries), "kv_tombstones": len(self.tombstones)}


def _irange_prefix(table: SortedDict, prefix: str) -> Iterator[str]:  # type: ignore[type-arg]
    for key in table.irange(minimum=prefix):
        if not key.startswith(prefix):
            return
        yield key
