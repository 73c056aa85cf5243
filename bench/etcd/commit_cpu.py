"""CPU per commit of the etcd backend, in-process, against another tree in the same run.

One worker process opens two `EtcdStorage` on a fresh prefix of the loopback
etcd cluster (so every Txn reaches two watches, as with two agents), makes
COUNT commits at CONCURRENCY through one of them, and reports the process
CPU time (user + system, both storages and gRPC's threads) per commit, the
Txns it took, and the etcd members' CPU per commit over the same window.
`--against SRC` runs the same worker on another checkout's `src/` too
(for instance the tree before a change), alternating the order round by
round on the same cluster, because this machine is shared and noisy: compare
medians, and read the spread.

`--conditions` gives every commit the two exact conditions a registration
carries (its instance key absent, its node unchanged); a tree whose
`commit()` takes no conditions runs without them and is marked so.

Usage:
    .venv/bin/python bench/etcd/commit_cpu.py [--against ../other/src] [--rounds 5]
        [--count 2000] [--concurrency 64] [--conditions] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


# -- worker (runs with PYTHONPATH set to the tree under test) -----------------


class _Count:
    def __init__(self) -> None:
        self.entries = 0

    def __call__(self, index: int, entries: list[Any], snapshot: bool = False) -> None:
        self.entries += len(entries)


async def _work(url: str, count: int, concurrency: int, conditions: bool) -> dict[str, Any]:
    from waypost.storage import Entry, open_storage

    try:
        from waypost.storage import Condition
    except ImportError:  # a tree from before conditions existed
        Condition = None
    with_conditions = conditions and Condition is not None
    writer, watcher = open_storage(url), open_storage(url)
    await writer.open(_Count())
    await watcher.open(_Count())
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        ops = [Entry(f"s/n1/svc-{i}", b"x" * 120)]
        async with limit:
            if with_conditions:
                await writer.commit(ops, [Condition(f"s/n1/svc-{i}", 0), Condition("n/n1", 0)])
            else:
                await writer.commit(ops)

    started, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    txns = writer.statistics().get("txns", 0)
    await writer.close()
    await watcher.close()
    return {
        "cpu_us": cpu / count * 1e6,
        "rate": count / wall,
        "txns": txns,
        "conditions": with_conditions,
    }


def worker(args: argparse.Namespace) -> None:
    # A first run on a prefix of its own warms the process up (imports done,
    # protobuf classes and gRPC channels used once); only the second counts.
    warm = args.worker.replace("prefix=/cpu-", "prefix=/warm-")
    asyncio.run(_work(warm, args.count // 4, args.concurrency, args.conditions))
    result = asyncio.run(_work(args.worker, args.count, args.concurrency, args.conditions))
    print(json.dumps(result), flush=True)


# -- driver -------------------------------------------------------------------


def _member_cpu(pids: list[int]) -> float:
    """utime + stime of the etcd members, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _run(src: str, url: str, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--worker", url, "--count", str(args.count)]
    cmd += ["--concurrency", str(args.concurrency)] + (["--conditions"] if args.conditions else [])
    env = {**os.environ, "PYTHONPATH": src}
    before = _member_cpu(pids)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["etcd_us"] = (_member_cpu(pids) - before) / args.count * 1e6
    return result


def _summary(name: str, runs: list[dict[str, Any]]) -> str:
    from _common import median

    cpu = sorted(r["cpu_us"] for r in runs)
    etcd = sorted(r["etcd_us"] for r in runs)
    per_txn = median([r["count"] / r["txns"] for r in runs if r["txns"]])
    marker = "" if all(r["conditions"] for r in runs) else " (no conditions)"

    def runs_of(values: list[float]) -> str:
        return " ".join(f"{v:.0f}" for v in values)

    return (
        f"{name}{marker}: **{median(cpu):.0f} µs** CPU/commit (runs {runs_of(cpu)}), "
        f"etcd members {median(etcd):.0f} µs/commit ({runs_of(etcd)}), "
        f"{per_txn:.1f} commits/Txn, {median([r['rate'] for r in runs]):.0f} commits/s"
    )


def driver(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE.parent))
    from _common import cluster, machine, median

    trees = {"this tree": str(HERE.parents[2] / "src")}
    for other in args.against:
        trees[f"`{other}`"] = str(Path(other).resolve())
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with cluster() as etcd:
        pids = [m.proc.pid for m in etcd.members if m.proc is not None]
        for round_no in range(args.rounds):
            order = list(trees) if round_no % 2 == 0 else list(reversed(trees))
            for name in order:
                url = etcd.url(f"/cpu-{uuid.uuid4().hex[:8]}/")
                result = _run(trees[name], url, args, pids)
                result["count"] = args.count
                results[name].append(result)
                print(f"round {round_no + 1} {name}: {json.dumps(result)}", flush=True)
    lines = [_summary(name, runs) for name, runs in results.items()]
    mine = results["this tree"]
    for name, runs in list(results.items())[1:]:
        ratios = sorted(a["cpu_us"] / b["cpu_us"] for a, b in zip(mine, runs, strict=True))
        lines.append(
            f"this tree / {name}, CPU per commit, paired by round: median **{median(ratios):.2f}** "
            f"(rounds {' '.join(f'{r:.2f}' for r in ratios)})"
        )
    text = (
        f"**CPU per commit, in-process** ({args.count} commits at {args.concurrency} concurrent, "
        f"two storages on one prefix, {args.rounds} alternated rounds, medians"
        f"{', two conditions per commit' if args.conditions else ''}):  \n"
        + "  \n".join(lines)
        + f"  \nCommand: `.venv/bin/python bench/etcd/commit_cpu.py {' '.join(sys.argv[1:])}`"
        + f"  \nMachine: {machine()}"
    )
    print(text)
    if args.write:
        from _common import write_result

        write_result("commit-cpu" + ("-conditions" if args.conditions else ""), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument(
        "--against", metavar="SRC", action="append", default=[], help="another checkout's src/"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--conditions", action="store_true")
    parser.add_argument("--write", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
