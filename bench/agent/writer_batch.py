"""The sqlite writer alone, in process: CPU per commit in batches of a given size.

No HTTP, no catalog: BATCH conditional puts of new keys (a registration's
shape: one put on the condition that its key is absent) are queued at once,
ROUNDS times, and each thread's time on CPU is read from schedstat. Run it
under callgrind for exact instruction counts (the writer is the third
thread's file):

    PYTHONPATH=<tree>/src valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file=/tmp/w.out .venv/bin/python bench/agent/writer_batch.py 24 100

Usage: PYTHONPATH=<tree>/src .venv/bin/python bench/agent/writer_batch.py [BATCH] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time

from waypost.storage import Condition, Entry, open_storage


def on_cpu() -> dict[str, int]:
    """Nanoseconds on CPU of each thread of this process."""
    return {
        tid: int(open(f"/proc/self/task/{tid}/schedstat").read().split()[0])
        for tid in os.listdir("/proc/self/task")
    }


async def main(size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="waypost-bench-writer-") as tmp:
        store = open_storage(f"sqlite://{tmp}/catalog.db")
        await store.open(lambda index, entries, snapshot=False: None)
        value, n = b"x" * 250, 0

        async def batch() -> None:
            nonlocal n
            keys = [f"s/n1/bench-{n + i}" for i in range(size)]
            n += size
            await asyncio.gather(
                *(store.commit([Entry(k, value)], [Condition(k, 0)]) for k in keys)
            )

        for _ in range(50):  # warm-up
            await batch()
        cpu0, started = on_cpu(), time.perf_counter()
        for _ in range(rounds):
            await batch()
        cpu1, took = on_cpu(), time.perf_counter() - started
        await store.close()
    commits = rounds * size
    per = {tid: (cpu1[tid] - cpu0.get(tid, 0)) / commits / 1e3 for tid in cpu1}
    loop = per.pop(str(threading.get_native_id()))
    others = ", ".join(f"{v:.1f}" for v in sorted(per.values(), reverse=True)[:2])
    print(
        f"batches of {size}: on CPU per commit: loop {loop:.1f} us, writer and checkpointer "
        f"{others} us; wall {took / commits * 1e6:.1f} us per commit"
    )


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 24,
            int(sys.argv[2]) if len(sys.argv) > 2 else 300,
        )
    )
