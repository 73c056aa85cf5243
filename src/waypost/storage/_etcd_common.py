"""What every part of the etcd backend shares: the key layout and one context.

Keys. Every catalog key `k` lives at `<prefix>k` (default prefix `/waypost/`),
the msgpack value as is. Two kinds of internal keys live next to them and are
never shown to the catalog: `<prefix>_rev`, rewritten by every Txn (so every
commit, even one that only deletes absent keys, and every refused one makes a
revision under the prefix that the watch delivers; `confirm()` reads it to
learn the revision of the last commit by any agent), and the slot keys
`<prefix>_txn/<agent>/<slot>` that make writes idempotent (_etcd_txn.py).
`Keys` owns that layout: where a catalog key lives, which etcd keys are
internal, and the pieces of a range that skip them.

Context. The mirror, the lease, the write path and the facade share one
`Context`: the parsed URL, the session to the members, the counters behind
`statistics()`, whether the store is closed or a member with a leader answered
last, deadlines (`timeout` from now, loop time) and background tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, Final

from ._etcd_config import EtcdConfig
from ._etcd_session import Session
from .base import Entry

log = logging.getLogger("waypost.storage.etcd")

META_KEY: Final = "_rev"
SLOT_DIR: Final = "_txn/"
CLOSE_TIMEOUT: Final = 2.0
BACKOFF_START: Final = 0.1
BACKOFF_MAX: Final = 1.0

STATISTICS: Final = (
    "commits",
    "conflicts",
    "outcome_unknown",
    "relists",
    "watch_restarts",
    "apply_failures",
    "lease_grants",
    "liveness_reputs",
    "keepalive_restarts",
    "fences",
)


class StreamEnded(Exception):
    """A watch or keep-alive stream ended or was cancelled by the member."""


def range_end(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (etcd's prefix range end)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Keys:
    """The etcd keys of one catalog prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.prefix_end = range_end(self.prefix)
        self.meta = self.prefix + META_KEY.encode()
        slot_dir = self.prefix + SLOT_DIR.encode()
        self._slot_dir = slot_dir
        self._cut = len(self.prefix)
        #: the internal ranges a condition's range must skip: `_rev` and the slot keys
        self.internal = ((self.meta, self.meta + b"\0"), (slot_dir, range_end(slot_dir)))

    def of(self, key: str) -> bytes:
        """The etcd key of a catalog key."""
        return self.prefix + key.encode()

    def slot(self, agent: str, index: int) -> bytes:
        return self.prefix + f"{SLOT_DIR}{agent}/{index}".encode()

    def cut(self, start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        """The pieces of [start, end) left once the internal keys (and anything
        past the prefix) are cut out."""
        pieces = [(start, min(end, self.prefix_end))]
        for cut_start, cut_end in self.internal:
            pieces = [
                piece
                for a, b in pieces
                for piece in ((a, min(b, cut_start)), (max(a, cut_end), b))
                if piece[0] < piece[1]
            ]
        return pieces

    def entry(self, kv: Any, deleted: bool = False) -> Entry | None:
        """The catalog entry of an etcd key-value (None for an internal key).

        Every agent runs this for every key of every watch event, two of them
        internal per Txn: internal keys are told apart on the bytes, before
        any decoding, and each field of `kv` (a protobuf message: every
        attribute read builds a Python object) is read once."""
        raw, cut = kv.key, self._cut
        if raw[cut : cut + 1] == b"_" and (raw == self.meta or raw.startswith(self._slot_dir)):
            return None
        key = raw[cut:].decode("utf-8", "replace")
        if deleted:
            return Entry(key, None, 0, kv.mod_revision)
        return Entry(key, kv.value, kv.create_revision, kv.mod_revision, kv.lease != 0)


class Context:
    """The state the parts of one EtcdStorage share (see the module docstring)."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self.session = Session(config)
        self.keys = Keys(config.prefix)
        self.stats: dict[str, int] = dict.fromkeys(STATISTICS, 0)
        self.closed = False
        self.healthy = False  # a member with a leader answered the last probe
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the store runs on, as its session keeps it (see Session.loop)."""
        return self.session.loop

    def deadline(self) -> float:
        """`timeout` from now, in loop time."""
        return self.loop.time() + self.config.timeout

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background task until close(); a crash is logged."""
        task = self.loop.create_task(coro)
        task.add_done_callback(_report_crash)
        self.tasks.append(task)
        return task


async def bounded(step: str, awaitable: Awaitable[Any], timeout: float = CLOSE_TIMEOUT) -> None:
    """Await a shutdown step, but never let it hold close() up for long."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("etcd store: %s took over %.0fs; going on without it", step, timeout)
        task.cancel()
    elif not task.cancelled() and task.exception() is not None:
        log.info("etcd store: %s failed: %s", step, task.exception())


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("etcd background task died", exc_info=task.exception())
