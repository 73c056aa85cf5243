"""Per-transaction timing of the sqlite writer under churn (issue 13, 5b).

The scale benchmark's wake-up tail is the durable commit's: this measures the
writer alone, in-process, without HTTP and without the catalog, so what it
shows does not depend much on how busy the CPUs are. It opens a copy of the
filled scale store (`bench/agent/scale.py --store FILE` makes it) with
`SqliteStorage`, replays it into nothing, then commits `--rate` re-registrations
per second (each a service and a check entry of a random instance, with one
condition per key, as the HTTP path's plans carry) for `--seconds`, and times,
in the writer thread, every transaction: its batch size, the time from BEGIN
to COMMIT (conditions and writes) and the COMMIT itself (the WAL append and
its fsync, plus sqlite's auto-checkpoint when the WAL passes 1,000 pages:
that one writes and fsyncs the main db file inside the COMMIT), and whether
the COMMIT left the WAL file larger than it found it (then its fdatasync also
commits the file's new size to the file system's journal). On the loop it
times each commit from `commit()` to its answer. Where the store checkpoints
on its own thread, its checkpoint counters are printed too.

Usage: .venv/bin/python bench/agent/commit_timing.py --store /tmp/scale-1m.db
       [--rate 1000] [--seconds 20] [--instances 1000000] [--services 10000]
       [--interval S] [--reset-frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import copy_store, header, line, percentile

from waypost.storage import Condition, Entry, sqlite
from waypost.storage.sqlite import SqliteStorage

# The stored sizes of a service (~140 bytes) and its check (~220 bytes).
SIZES = {"s": 140, "c": 220}


def _ops(i: int, services: int, rng: random.Random) -> tuple[list[Entry], list[Condition]]:
    name = f"svc-{i % services}"
    sid = f"{name}-{i}"
    node = f"node-{i % 10000}"
    keys = [f"s/{node}/{sid}", f"c/{node}/service:{sid}"]  # the store's own key layout
    ops = [Entry(key, rng.randbytes(SIZES[key[0]])) for key in keys]
    # A range condition that holds (nothing newer than a huge index): one
    # short index scan per key, the cost of the plan's exact conditions.
    conds = [Condition(key, 10**12, key + "\x00") for key in keys]
    return ops, conds


class _TimedGate:
    """The checkpointer's gate: how long the writer waited for it, and how
    long the checkpointer held it (spans labelled "writer held")."""

    def __init__(self, lock: Any, spans: list[tuple[float, float, str]]) -> None:
        self.lock, self.spans = lock, spans
        self.held_since = 0.0

    def __enter__(self) -> None:
        t = time.perf_counter()
        self.lock.acquire()
        if threading.current_thread().name == "waypost-sqlite-writer":
            gate_waits.append(time.perf_counter() - t)
        else:
            self.held_since = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread().name != "waypost-sqlite-writer":
            self.spans.append((self.held_since, time.perf_counter(), "writer held"))
        self.lock.release()


gate_waits: list[float] = []


def _backfilled(shm: Path) -> int:
    """sqlite's nBackfill (frames checkpointed into the db since the WAL started
    over), from the wal-index: native u32 after the two 48-byte headers."""
    try:
        with shm.open("rb") as f:
            f.seek(96)
            return int.from_bytes(f.read(4), sys.byteorder)
    except OSError:
        return 0


def _timed_checkpoints(spans: list[tuple[float, float, str]]) -> None:
    """Where the store checkpoints on its own thread: record (start, end, what)."""
    try:
        from waypost.storage import _sqlite_checkpoint as ckpt
    except ImportError:
        return
    run_checkpoint = ckpt._run_checkpoint

    def timed(conn: Any) -> tuple[int, int, int]:
        t = time.perf_counter()
        row = run_checkpoint(conn)
        spans.append((t, time.perf_counter(), "PASSIVE call"))
        return row

    init = ckpt.Checkpointer.__init__

    def tracked(self: Any, path: Path) -> None:
        init(self, path)
        self.gate = _TimedGate(self.gate, spans)

    ckpt._run_checkpoint = timed
    ckpt.Checkpointer.__init__ = tracked  # type: ignore[method-assign]


shm: list[Path] = [Path("/nonexistent")]
inside: list[float] = []  # durations of COMMITs that ran a checkpoint
grew: list[float] = []  # durations of COMMITs after which the WAL file was larger


def _wal_size() -> int:
    """The WAL file's size (its path beside the wal-index's)."""
    try:
        return os.stat(str(shm[0])[: -len("-shm")] + "-wal").st_size
    except OSError:
        return 0


def _timed_writer(timings: list[tuple[int, float, float, float]]) -> None:
    """Wrap the writer's batch write and COMMIT to record (batch, body s, commit s)."""
    write_batch = SqliteStorage._write_batch
    end = SqliteStorage._end_transaction
    state: dict[str, float] = {}

    def ended(conn: Any) -> None:
        before, size = _backfilled(shm[0]), _wal_size()
        t = time.perf_counter()
        end(conn)
        state["inside"] = _backfilled(shm[0]) > before  # this COMMIT checkpointed
        state["grew"] = _wal_size() > size  # a new file size: fdatasync commits its metadata too
        state["commit"] = time.perf_counter() - t
        state["body"] = t - state["begin"]
        state["end"] = time.perf_counter()

    def batch(self: SqliteStorage, conn: Any, pending: list[Any]) -> None:
        state["begin"] = time.perf_counter()
        state["commit"] = -1.0
        write_batch(self, conn, pending)
        if state["commit"] >= 0 and len(pending) > 0:
            timings.append((len(pending), state["body"], state["commit"], state["end"]))
            if state["inside"]:
                inside.append(state["commit"])
            if state["grew"]:
                grew.append(state["commit"])

    SqliteStorage._write_batch = batch  # type: ignore[method-assign]
    SqliteStorage._end_transaction = staticmethod(ended)  # type: ignore[method-assign]


async def run(store: Path, args: argparse.Namespace) -> None:
    timings: list[tuple[int, float, float, float]] = []
    _timed_writer(timings)
    spans: list[tuple[float, float, str]] = []
    _timed_checkpoints(spans)
    sqlite.COMMIT_TIMEOUT = 60.0
    storage = SqliteStorage(f"sqlite://{store}")
    shm[0] = Path(f"{store}-shm")
    t = time.monotonic()
    await storage.open(lambda index, entries, snapshot=False: None)
    line(f"opened (replayed into nothing) in {time.monotonic() - t:.1f} s")
    rng = random.Random(13)
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(ops: list[Entry], conds: list[Condition]) -> None:
        t = time.perf_counter()
        await storage.commit(ops, conds)
        latencies.append((time.perf_counter() - t) * 1000)

    interval = 1.0 / args.rate
    deadline = time.monotonic() + args.seconds
    next_at = time.monotonic()
    wal = Path(f"{store}-wal")
    wal_max = 0
    while (now := time.monotonic()) < deadline:
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += interval
        task = asyncio.create_task(one(*_ops(rng.randrange(args.instances), args.services, rng)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if wal.exists():
            wal_max = max(wal_max, wal.stat().st_size)
    await asyncio.gather(*tasks)
    stats = storage.statistics()
    await storage.close()
    report(timings, latencies, wal_max, stats, args)
    report_checkpoints(timings, spans)


def _dist(name: str, values: list[float]) -> str:
    s = sorted(values)
    if not s:
        return f"{name}: none"
    qs = " ".join(f"p{q} {percentile(s, q):.1f}" for q in (50, 90, 99, 99.9))
    return f"{name}: n={len(s)} {qs} max {s[-1]:.1f} ms"


def report(
    timings: list[tuple[int, float, float, float]],
    latencies: list[float],
    wal_max: int,
    stats: dict[str, float],
    args: argparse.Namespace,
) -> None:
    line(f"load average at the end {os.getloadavg()[0]:.2f}")
    line(_dist("commit() to answer", latencies))
    line(_dist("COMMIT (WAL append + fsync)", [c * 1000 for _, _, c, _ in timings]))
    line(_dist("BEGIN..COMMIT (conditions + writes)", [b * 1000 for _, b, _, _ in timings]))
    sizes = sorted(float(n) for n, _, _, _ in timings)
    line(
        f"batch size: p50 {percentile(sizes, 50):.0f} p99 {percentile(sizes, 99):.0f} "
        f"max {sizes[-1]:.0f} ({len(sizes)} transactions in {args.seconds:.0f} s)"
    )
    slow = sorted((c for _, _, c, _ in timings), reverse=True)[:10]
    line("ten slowest COMMITs (ms): " + " ".join(f"{c * 1000:.0f}" for c in slow))
    line(
        _dist(
            "COMMITs during which the db took frames (main: its own auto-checkpoint)",
            [c * 1000 for c in inside],
        )
    )
    line(_dist("the writer's waits for the checkpointer's gate", [w * 1000 for w in gate_waits]))
    line(_dist("COMMITs that grew the WAL file", [c * 1000 for c in grew]))
    over = sum(c > 0.02 for _, _, c, _ in timings)
    line(f"COMMITs over 20 ms: {over}, of which {sum(c > 0.02 for c in grew)} grew the WAL file")
    line(f"largest WAL file seen: {wal_max / 2**20:.1f} MB")
    extra = {k: v for k, v in stats.items() if k.startswith("checkpoint") or k.startswith("wal")}
    if extra:
        line("store: " + ", ".join(f"{k} {v:g}" for k, v in sorted(extra.items())))


def report_checkpoints(
    timings: list[tuple[int, float, float, float]], spans: list[tuple[float, float, str]]
) -> None:
    """Checkpoint durations by mode, and how many slow transactions overlapped one."""
    for mode in sorted({m for _, _, m in spans}):
        line(_dist(f"checkpoint {mode}", [(e - s) * 1000 for s, e, m in spans if m == mode]))
    slow = [(end - body - commit, end) for _, body, commit, end in timings if body + commit > 0.02]
    during = sum(any(s < e2 and s2 < e for s2, e2, _ in spans) for s, e in slow)
    line(f"transactions over 20 ms: {len(slow)}, of which {during} overlapped a checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="the filled scale store")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--interval", type=float, help="override the checkpointer's INTERVAL")
    parser.add_argument("--reset-frames", type=int, help="override its RESET_FRAMES")
    args = parser.parse_args()
    header(f"sqlite writer under {args.rate} commits/s for {args.seconds:g} s on {args.store}")
    if args.interval is not None:
        from waypost.storage import _sqlite_checkpoint

        _sqlite_checkpoint.INTERVAL = args.interval
    if args.reset_frames is not None:
        from waypost.storage import _sqlite_checkpoint

        _sqlite_checkpoint.RESET_FRAMES = args.reset_frames
    with tempfile.TemporaryDirectory(prefix="waypost-commit-timing-", dir="/tmp") as tmp:
        copy = Path(tmp) / "catalog.db"
        copy_store(args.store, copy)
        asyncio.run(run(copy, args))


if __name__ == "__main__":
    main()
