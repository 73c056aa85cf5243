"""Writing one change's answers to many connections from two cores.

When a change wakes thousands of blocking queries, the agent writes an
answer to each connection in one callback, and ~85% of that callback is the
kernel's `send()`: on loopback the sender's call also runs the receiver's
TCP work, ~9-14 µs per socket on this project's 2-core test machine (a C
program writing prebuilt bytes pays the same: bench/agent/blocking.py
`--watchers c` measures it as "the floor"). One event loop keeps that on one
core. `FanOut.write` gives half of a large batch to a worker thread, which
writes with `os.write` while the loop thread writes the other half: the GIL
is released for every `send()`, so the two halves run on two cores.

Only what is safe to write beside the transport is written this way: a plain
TCP transport (never TLS: its socket carries records, not these bytes) with
an empty write buffer (so no byte can overtake one it queued) and open. The
loop thread waits for the worker before it returns to the loop, so no
transport changes meanwhile. A partial write, a full socket (`EAGAIN`) or an
error leaves the rest to `transport.write()`, which queues it or reports the
error the way it always does.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from typing import Any

# Below this many answers (~1 ms of sends) the worker's hand-off (~50 µs) is not worth it.
PARALLEL_MIN = 128


def _plain_transports() -> tuple[type, ...]:
    """Transports whose socket carries exactly the bytes written to them
    (private names of asyncio and uvloop: looked up, never assumed)."""
    import asyncio.selector_events

    found = [getattr(asyncio.selector_events, "_SelectorSocketTransport", None)]
    try:
        import uvloop.loop

        found.append(getattr(uvloop.loop, "TCPTransport", None))
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio's loop works too
        pass
    return tuple(t for t in found if isinstance(t, type))


_PLAIN = _plain_transports()


class FanOut:
    """Writes (transport, bytes) pairs, the larger batches from two threads;
    a transport already closing gets nothing (a closed one takes no more bytes)."""

    def __init__(self, threads: int | None = None) -> None:
        self.parallel = (threads if threads is not None else _cores()) >= 2
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self.batches = 0  # statistics: batches written from two threads

    def write(self, pairs: Sequence[tuple[Any, bytes]]) -> None:
        if not self.parallel or len(pairs) < PARALLEL_MIN:
            for transport, data in pairs:
                if not transport.is_closing():
                    transport.write(data)
            return
        direct: list[tuple[int, bytes]] = []
        owners: list[tuple[Any, bytes]] = []
        for transport, data in pairs:
            if transport.is_closing():
                continue
            sock = _writable_beside(transport)
            if sock is None:
                transport.write(data)
            else:
                direct.append((sock.fileno(), data))
                owners.append((transport, data))
        written = [0] * len(direct)
        job = self._submit(direct, written) if len(direct) >= PARALLEL_MIN else None
        try:
            _write_fds(direct, 0, job.start if job else len(direct), written)
        finally:
            if job is not None:
                job.done.wait()  # always: the worker writes on these fds
                self.batches += 1
        for (transport, data), count in zip(owners, written, strict=True):
            if count < len(data):
                transport.write(memoryview(data)[count:] if count else data)

    def _submit(self, direct: list[tuple[int, bytes]], written: list[int]) -> _Job | None:
        """The second half of `direct` for the worker (started at the first
        batch); None if no thread can be had: the loop then writes alone."""
        if self._worker is None:
            worker = threading.Thread(target=self._run, name="waypost-fanout", daemon=True)
            try:
                worker.start()
            except RuntimeError:
                self.parallel = False
                return None
            self._worker = worker
        job = _Job(direct, len(direct) // 2, written)
        self._jobs.put(job)
        return job

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                _write_fds(job.pairs, job.start, len(job.pairs), job.written)
            finally:
                job.done.set()  # never leave the loop thread waiting


def _cores() -> int:
    """The cores this process may run on (os.cpu_count() where the platform
    cannot say, as on macOS)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


class _Job:
    """The worker's share of one batch: pairs[start:], counts into written."""

    __slots__ = ("done", "pairs", "start", "written")

    def __init__(self, pairs: list[tuple[int, bytes]], start: int, written: list[int]) -> None:
        self.pairs = pairs
        self.start = start
        self.written = written
        self.done = threading.Event()


def _writable_beside(transport: Any) -> Any:
    """The transport's socket if bytes may be written to it directly, else None."""
    if type(transport) not in _PLAIN:
        return None
    if transport.get_write_buffer_size():
        return None  # bytes it queued go first
    return transport.get_extra_info("socket")


def _write_fds(pairs: list[tuple[int, bytes]], start: int, stop: int, written: list[int]) -> None:
    """Into written[i], the bytes written to pairs[i]'s fd: all of them, fewer,
    or 0 (full or failed: the transport's own write then finishes it or
    reports the error). Filled as it goes, so a count is never lost."""
    for i in range(start, stop):
        fd, data = pairs[i]
        try:  # noqa: SIM105 - a context manager per write costs more than the try
            written[i] = os.write(fd, data)
        except OSError:
            pass
