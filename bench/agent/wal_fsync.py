"""The disk alone: a WAL-like fdatasync beside checkpoint-like db writes (issue 13, 5b).

No sqlite, no agent: what the scale benchmark's durable commit costs on this
disk, and how much of it the checkpointer's writes add. One thread appends
12 KiB (a commit's three WAL frames) to a 32 MiB file, round robin, and
fdatasyncs it, 700 times a second (the writer's transaction rate at 1,000
writes/s); each fdatasync is timed. Another thread plays the checkpointer:
every `interval` it writes `--pages-per-s * interval` random 4 KiB pages of a
copy of the scale store, in page order as sqlite's checkpoint does, and
fdatasyncs that file, at the normal or the idle I/O class. The phases
alternate every `--phase` seconds, "off" (no checkpoint writes) between any
two others, so every variant is read against the disk's own tail under the
same background (other processes' I/O on a shared machine).

Usage: .venv/bin/python bench/agent/wal_fsync.py --store /tmp/scale-1m.db
       [--variants normal@0.25,idle@0.25,normal@0.05] [--rounds 6] [--phase 2]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import _ioprio
from _common import copy_store, header, line, percentile

WAL_BYTES = 32 << 20
RECORD = os.urandom(12288)
PAGE = os.urandom(4096)


class Run:
    def __init__(self, db: int, wal: int, pages_per_s: int) -> None:
        self.db, self.wal, self.pages_per_s = db, wal, pages_per_s
        self.phase = "off"
        self.stopping = False
        self.fsyncs: list[tuple[str, float]] = []
        self.checkpoints: list[tuple[str, float]] = []

    def writer(self) -> None:
        offset, next_at = 0, time.monotonic()
        while not self.stopping:
            next_at += 1 / 700
            time.sleep(max(0.0, next_at - time.monotonic()))
            phase, started = self.phase, time.perf_counter()
            os.pwrite(self.wal, RECORD, offset)
            os.fdatasync(self.wal)
            self.fsyncs.append((phase, time.perf_counter() - started))
            offset = (offset + len(RECORD)) % WAL_BYTES

    def checkpointer(self) -> None:
        pages = os.fstat(self.db).st_size // len(PAGE)
        rng, normal = random.Random(13), _ioprio.get_priority()
        while not self.stopping:
            phase = self.phase
            if phase == "off":
                time.sleep(0.01)
                continue
            io, _, every = phase.partition("@")
            _ioprio.set_priority(_ioprio.IDLE if io == "idle" else (normal or 0))
            started = time.perf_counter()
            for page in sorted(rng.sample(range(pages), int(self.pages_per_s * float(every)))):
                os.pwrite(self.db, PAGE, page * len(PAGE))
            os.fdatasync(self.db)
            took = time.perf_counter() - started
            self.checkpoints.append((phase, took))
            time.sleep(max(0.0, float(every) - took))


def report(run: Run, variants: list[str]) -> None:
    for phase in ["off", *variants]:
        ms = sorted(d * 1000 for p, d in run.fsyncs if p == phase)
        ck = sorted(d * 1000 for p, d in run.checkpoints if p == phase)
        qs = " ".join(f"p{q} {percentile(ms, q):.2f}" for q in (50, 99, 99.9))
        tail = f"; checkpoints n={len(ck)} p50 {percentile(ck, 50):.1f} ms" if ck else ""
        line(f"{phase:12s} WAL fdatasync n={len(ms)} {qs} max {ms[-1]:.1f} ms{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="the filled scale store")
    parser.add_argument("--variants", default="normal@0.25,idle@0.25,normal@0.05")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--phase", type=float, default=2.0)
    parser.add_argument("--pages-per-s", type=int, default=2000)
    args = parser.parse_args()
    variants = args.variants.split(",")
    normal = _ioprio.get_priority()
    if any(v.startswith("idle@") for v in variants):  # else an "idle" phase would run normal
        if not _ioprio.set_priority(_ioprio.IDLE):
            raise SystemExit("this kernel or platform refuses the idle I/O class")
        _ioprio.set_priority(normal or 0)
    header(f"WAL fdatasync beside checkpoint-like writes of {args.store}: {variants}")
    with tempfile.TemporaryDirectory(prefix="waypost-wal-fsync-", dir="/tmp") as tmp:
        copy_store(args.store, Path(tmp) / "db")
        db = os.open(Path(tmp) / "db", os.O_RDWR)
        wal = os.open(Path(tmp) / "wal", os.O_RDWR | os.O_CREAT)
        os.ftruncate(wal, WAL_BYTES)
        os.fsync(wal)
        run = Run(db, wal, args.pages_per_s)
        threads = [threading.Thread(target=run.writer), threading.Thread(target=run.checkpointer)]
        for thread in threads:
            thread.start()
        for _ in range(args.rounds):
            for variant in variants:
                run.phase = "off"
                time.sleep(args.phase)
                run.phase = variant
                time.sleep(args.phase)
        run.stopping = True
        for thread in threads:
            thread.join()
        os.close(db)
        os.close(wal)
    line(f"load average at the end {os.getloadavg()[0]:.2f}")
    report(run, variants)


if __name__ == "__main__":
    main()
