"""System calls per durable registration in the agent process, per thread, by strace.

The agent's CPU per write is user space (callgrind counts it: instructions.py)
plus the kernel's share, which callgrind cannot see: the socket reads and
writes, the loop's epoll calls, the futex hand-offs of the GIL between the
event loop and the sqlite writer, the loop's wake-ups from the writer
(`call_soon_threadsafe` writes to uvloop's async handle), the WAL's pwrite and
fdatasync. This counts them:

    .venv/bin/python bench/agent/syscalls.py --tree /path/to/old/checkout --tree .

Each tree's agent (sqlite store, `--log-level warning` as registrations.py
runs it) gets a warm-up of 500 registrations; then CPU_COUNT registrations
untraced give each thread's CPU time, its kernel share and its context
switches (/proc/PID/task/TID: schedstat, stat, status); then `strace -f -p PID` is
attached for COUNT registrations (CONCURRENCY keep-alive connections, unique
services, no checks, the body of registrations.py) and detached. Counts are
exact; strace slows the agent down several times, which moves group commit's
batch sizes (so per-batch calls per registration are higher than at full
speed: the commits per transaction are printed beside them).

Threads are named by what they do: the loop is the process's first thread;
the checkpointer is the thread that fsyncs the db file; the sqlite writer,
the one that fsyncs only the WAL; anything else is "other".
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import AgentProcess, header, line
from registrations import registration

_CALL = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)(?:\(| resumed>)")


async def drive(url: str, count: int, concurrency: int, run: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate, session.put(url, data=registration(i, run)) as r:
                assert r.status == 200, await r.text()

        await asyncio.gather(*(one(i) for i in range(count)))


def start(tree: Path, data: str) -> AgentProcess:
    """The tree's agent, as registrations.py runs it (the shared launcher: it
    waits for the agent with a deadline, drains its output, never binds 8502)."""
    args = ("--data-dir", data, "--http", "127.0.0.1:0", "--dns", "off", "--log-level", "warning")
    return AgentProcess(*args, env={"PYTHONPATH": str(tree / "src")}).start()


def parse(path: Path, pid: int) -> dict[int, collections.Counter[str]]:
    """Calls per thread id; a call strace split ("unfinished", "resumed") counts once."""
    calls: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for text in path.read_text(errors="replace").splitlines():
        if "resumed>" in text:
            continue
        if m := _CALL.match(text):
            calls[int(m.group(1))][m.group(2)] += 1
        elif text.startswith(tuple("abcdefghijklmnopqrstuvwxyz")):  # -f on one thread: no tid
            calls[pid][text.split("(", 1)[0]] += 1
    return calls


def name_threads(
    path: Path, pid: int, calls: dict[int, collections.Counter[str]]
) -> dict[int, str]:
    """The loop is `pid`; the writer and the checkpointer by the file they fsync."""
    names = {tid: "other" for tid in calls}
    names[pid] = "loop"
    syncs = re.compile(r"^(\d+)\s+f(?:data)?sync\((\d+)")
    fds: dict[int, set[int]] = collections.defaultdict(set)
    for text in path.read_text(errors="replace").splitlines():
        if m := syncs.match(text):
            fds[int(m.group(1))].add(int(m.group(2)))
    for tid in fds:
        if tid == pid:
            continue
        paths = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds[tid]
                 if os.path.exists(f"/proc/{pid}/fd/{fd}")]  # fmt: skip
        # Both fsync a WAL (each connection has its own fd); only the
        # checkpointer fsyncs the db file itself.
        db = any(not p.endswith("-wal") for p in paths)
        names[tid] = "checkpointer" if db else "sqlite writer"
    return names


def measure(
    tree: Path, count: int, cpu_count: int, concurrency: int
) -> tuple[dict[str, collections.Counter[str]], tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="waypost-bench-syscalls-") as tmp:
        agent = start(tree, f"{tmp}/data")
        assert agent.proc is not None
        try:
            cpu, calls, names, per_batch = _runs(
                agent.proc.pid, agent.http_url, count, cpu_count, concurrency, tmp
            )
        finally:
            agent.stop(timeout=30)  # SIGKILL after that: the data dir goes next
    merged: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for tid, counter in calls.items():
        merged[names[tid]].update(counter)
    for tid, values in cpu.items():  # carried as pseudo-calls "cpu:..."
        for name, value in zip(_CPU_FIELDS, values, strict=True):
            merged[names.get(tid, "other")][name] += value
    return merged, per_batch


def _runs(
    pid: int, base: str, count: int, cpu_count: int, concurrency: int, tmp: str
) -> tuple[
    dict[int, list[int]], dict[int, collections.Counter[str]], dict[int, str], tuple[float, float]
]:
    """The untraced run (CPU and switches per thread), then the traced one."""
    url = f"{base}/v1/agent/service/register"
    out = Path(tmp) / "trace"
    asyncio.run(drive(url, 500, concurrency, 0))
    cpu0, before = _thread_cpu(pid), _transactions(base)
    asyncio.run(drive(url, cpu_count, concurrency, 2))
    cpu = {tid: [b - a for a, b in zip(cpu0.get(tid, (0,) * 5), t, strict=True)]
           for tid, t in _thread_cpu(pid).items()}  # fmt: skip
    untraced = cpu_count / max(1, _transactions(base) - before)
    before = _transactions(base)
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)  # strace attaches to every thread before the run starts
        asyncio.run(drive(url, count, concurrency, 1))
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    traced = count / max(1, _transactions(base) - before)
    calls = parse(out, pid)
    return cpu, calls, name_threads(out, pid, calls), (untraced, traced)


_CPU_FIELDS = ("cpu:user", "cpu:system", "cpu:ns", "cpu:voluntary", "cpu:involuntary")


def _thread_cpu(pid: int) -> dict[int, tuple[int, ...]]:
    """Of each thread of `pid`: utime and stime (clock ticks: the split),
    time on CPU (ns, from schedstat: the total), and its voluntary and
    involuntary context switches (a futex or epoll wait that slept is one
    voluntary switch: the GIL hand-offs, counted without strace's slowing)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ns = int((task / "schedstat").read_text().split()[0])
        status = dict(
            row.split(":\t", 1)
            for row in (task / "status").read_text().splitlines()
            if ":\t" in row
        )
        switches = int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"])
        out[int(task.name)] = (int(fields[11]), int(fields[12]), ns, *switches)
    return out


def _transactions(base: str) -> int:
    import httpx

    stats = httpx.get(f"{base}/v1/agent/self", timeout=10).json()["Stats"]["store"]
    return int(stats["transactions"])


def report(
    merged: dict[str, collections.Counter[str]],
    count: int,
    cpu_count: int,
    per_batch: tuple[float, float],
) -> None:
    line(f"  registrations per transaction: {per_batch[0]:.1f} untraced, {per_batch[1]:.1f} traced")
    for thread in ("loop", "sqlite writer", "checkpointer", "other"):
        counter = merged.get(thread)
        if not counter:
            continue
        user, system, ns, vol, invol = (counter.pop(name, 0) for name in _CPU_FIELDS)
        line(
            f"  {thread}: untraced, per registration: CPU {ns / 1e3 / cpu_count:.1f} us "
            f"({system / max(1, user + system):.0%} kernel), context switches "
            f"{vol / cpu_count:.2f} voluntary, {invol / cpu_count:.2f} involuntary"
        )
        total = sum(counter.values())
        top = ", ".join(f"{name} {n / count:.2f}" for name, n in counter.most_common(12))
        line(f"  {thread}: {total / count:.2f} calls per registration: {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, required=True, help="a checkout")
    parser.add_argument("--count", type=int, default=3000, help="registrations traced")
    parser.add_argument(
        "--cpu-count", type=int, default=15000, help="registrations for CPU and switches, untraced"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    header(f"system calls per durable registration (strace -f), {args.count} registrations")
    for tree in args.tree:
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        line(f"{tree} ({rev}):")
        merged, per_batch = measure(tree.resolve(), args.count, args.cpu_count, args.concurrency)
        report(merged, args.count, args.cpu_count, per_batch)


if __name__ == "__main__":
    main()
