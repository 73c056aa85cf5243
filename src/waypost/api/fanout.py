"""Writing one change's answers to many connections from two cores.

When a change wakes thousands of blocking queries, the agent writes an
answer to each connection in one callback, and ~85% of that callback is the
kernel's `send()`: on loopback the sender's call also runs the receiver's
TCP work, ~9-14 µs per socket on this project's 2-core test machine (a C
program writing prebuilt bytes pays the same: bench/agent/blocking.py
`--watchers c` measures it as "the floor"). One event loop keeps that on one
core. `FanOut.write` has a worker thread write a large batch beside the
loop thread, both with `os.write`: the GIL is released for every `send()`,
so the two run on two cores. They take the batch in chunks, each the next
one left, rather than half each: a thread that loses its core for a while
(the watchers reading, another process) leaves more of the batch to the
other, so the last send is not held back by the slower half (measured at
10,000: the halves ended 58 and 96 ms in, docs/benchmarks.md section 3).

Only what is safe to write beside the transport is written this way: a plain
TCP transport (never TLS: its socket carries records, not these bytes) with
an empty write buffer (so no byte can overtake one it queued) and open. The
first (`plain_fd`) cannot change while the connection lives, so the protocol
asks it once per connection; the others are checked for every answer. The
loop thread waits for the worker before it returns to the loop, so no
transport changes meanwhile. A partial write, a full socket (`EAGAIN`) or an
error leaves the rest to `transport.write()`, which queues it or reports the
error the way it always does.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

# Below this many answers (~1 ms of sends) the worker's hand-off (~50 µs) is not worth it.
PARALLEL_MIN = 128
# Sends per chunk: ~0.5-1 ms of them, so the two threads end at most that far
# apart, while the hand-out (one next() on a shared counter) stays negligible.
CHUNK = 64


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
        self.batches = 0  # statistics: batches handed to the worker

    def write(self, pairs: Sequence[tuple[Any, bytes]]) -> None:
        if not self.parallel or len(pairs) < PARALLEL_MIN:
            for transport, data in pairs:
                if not transport.is_closing():
                    transport.write(data)
            return
        batch = Batch()
        for transport, data in pairs:
            if not transport.is_closing():
                batch.add(transport, plain_fd(transport), data)
        self.send(batch)

    def send(self, batch: Batch) -> None:
        """Write the batch's direct bytes, the worker taking chunks of them
        beside the loop thread when there are enough; what a socket did not
        take goes through its transport."""
        fds, datas = batch.fds, batch.datas
        written = [0] * len(fds)
        # The next chunk's start, for both threads: next() on it is atomic
        # under the GIL (a free-threaded build would need a lock here).
        chunks = itertools.count(0, CHUNK)
        job = self._submit(fds, datas, written, chunks) if len(fds) >= PARALLEL_MIN else None
        try:
            _write_chunks(fds, datas, written, chunks)
        finally:
            if job is not None:
                job.done.wait()  # always: the worker writes on these fds
                self.batches += 1  # handed to the worker (which may have come too late for a chunk)
        for transport, data, count in zip(batch.owners, datas, written, strict=True):
            if count < len(data):
                transport.write(memoryview(data)[count:] if count else data)

    def _submit(
        self, fds: list[int], datas: list[bytes], written: list[int], chunks: Iterator[int]
    ) -> _Job | None:
        """The batch for the worker too (started at the first batch), which
        takes its chunks from `chunks` as the loop thread does; None if no
        thread can be had: the loop then writes alone."""
        if self._worker is None:
            worker = threading.Thread(target=self._run, name="waypost-fanout", daemon=True)
            try:
                worker.start()
            except RuntimeError:
                self.parallel = False
                return None
            self._worker = worker
        job = _Job(fds, datas, written, chunks)
        self._jobs.put(job)
        return job

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                _write_chunks(job.fds, job.datas, job.written, job.chunks)
            finally:
                job.done.set()  # never leave the loop thread waiting


class Batch:
    """One wake-up's answers for `FanOut.send`: the bytes for sockets that may
    be written beside their transport, as parallel lists (no tuple per answer:
    at 10,000 answers the allocations alone would start a collection in the
    middle of the wake-up); the others are written through their transport
    at once."""

    __slots__ = ("datas", "fds", "owners")

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.datas: list[bytes] = []
        self.owners: list[Any] = []  # each fd's transport: the rest of what its socket refused

    def add(self, transport: Any, fd: int, data: bytes) -> None:
        """`data` for `transport` (open: the caller checked), whose `plain_fd` is `fd`."""
        if (
            fd < 0 or transport.get_write_buffer_size()
        ):  # not plain TCP; or bytes it queued go first
            transport.write(data)
        else:
            self.fds.append(fd)
            self.datas.append(data)
            self.owners.append(transport)


def plain_fd(transport: Any) -> int:
    """The fd of a plain TCP transport's socket, which bytes may be written to
    beside it (while it is open and queues nothing); -1 for any other (TLS:
    its socket carries records, not these bytes). Neither can change while the
    transport lives, so a connection asks once (api/protocol.py), not every
    wake-up."""
    if type(transport) not in _PLAIN:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


def _cores() -> int:
    """The cores this process may run on (os.cpu_count() where the platform
    cannot say, as on macOS)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


class _Job:
    """One batch for the worker: the chunks of fds it takes from `chunks`, counts into written."""

    __slots__ = ("chunks", "datas", "done", "fds", "written")

    def __init__(
        self, fds: list[int], datas: list[bytes], written: list[int], chunks: Iterator[int]
    ) -> None:
        self.fds = fds
        self.datas = datas
        self.written = written
        self.chunks = chunks
        self.done = threading.Event()


def _write_chunks(
    fds: list[int], datas: list[bytes], written: list[int], chunks: Iterator[int]
) -> None:
    """Write the chunks of the batch that `chunks` (shared with the other
    thread) hands out, until it is past the end."""
    count = len(fds)
    for start in chunks:
        if start >= count:
            return
        _write_fds(fds, datas, start, min(start + CHUNK, count), written)


def _write_fds(
    fds: list[int], datas: list[bytes], start: int, stop: int, written: list[int]
) -> None:
    """Into written[i], the bytes of datas[i] written to fds[i]: all of them,
    fewer, or 0 (full or failed: the transport's own write then finishes it or
    reports the error). Filled as it goes, so a count is never lost."""
    for i in range(start, stop):
        try:  # noqa: SIM105 - a context manager per write costs more than the try
            written[i] = os.write(fds[i], datas[i])
        except OSError:
            pass
