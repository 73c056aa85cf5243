"""Instructions per commit of the etcd backend, in-process, counted by callgrind.

The workload of commit_cpu.py (two `EtcdStorage` on a fresh prefix of the
loopback cluster, one committing, both following the watch), but counted in
instructions, which the shared machine's load does not move: the worker runs
under `valgrind --tool=callgrind --instr-atstart=no`, warms up on a prefix of
its own, and instrumentation is switched on for the COUNT measured commits
only (all the worker's threads, gRPC's included; not the etcd members).
Under valgrind the worker is far slower than etcd, so Txns carry fewer
commits than in a native run; every tree is measured the same way.

Usage:
    .venv/bin/python bench/etcd/commit_instructions.py [--against ../other/src]
        [--count 1000] [--concurrency 64] [--conditions] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from commit_cpu import _work  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """Warm up, then make the measured commits between two lines on stdin."""
    warm = args.worker.replace("prefix=/ins-", "prefix=/warm-")
    asyncio.run(_work(warm, max(args.count // 4, 100), args.concurrency, args.conditions))
    print("ready", flush=True)
    sys.stdin.readline()
    result = asyncio.run(_work(args.worker, args.count, args.concurrency, args.conditions))
    print(json.dumps(result), flush=True)
    sys.stdin.readline()


def _instrument(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], capture_output=True, check=True)


def _measure(src: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    out = f"{tempfile.mkdtemp()}/callgrind.out"
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, str(HERE), "--worker", url, "--count", str(args.count),
        "--concurrency", str(args.concurrency), *(["--conditions"] if args.conditions else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": src, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker of {src} did not start")
        _instrument(proc.pid, "on")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result: dict[str, Any] = json.loads(proc.stdout.readline())
        _instrument(proc.pid, "off")
        proc.stdin.write("bye\n")
        proc.stdin.flush()
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    total = 0
    for path in glob.glob(out + "*"):
        for text in Path(path).read_text(errors="replace").splitlines():
            if text.startswith(("summary:", "totals:")):
                total = max(total, int(text.split()[1]))
    result["instructions"] = total / args.count
    return result


def driver(args: argparse.Namespace) -> None:
    from _common import cluster, machine, median

    trees = {"this tree": str(HERE.parents[2] / "src")}
    for other in args.against:
        trees[f"`{other}`"] = str(Path(other).resolve())
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with cluster() as etcd:
        for round_no in range(args.rounds):
            for name in list(trees) if round_no % 2 == 0 else list(reversed(trees)):
                url = etcd.url(f"/ins-{uuid.uuid4().hex[:8]}/")
                result = _measure(trees[name], url, args)
                results[name].append(result)
                print(f"round {round_no + 1} {name}: {json.dumps(result)}", flush=True)
    first = median([r["instructions"] for r in results["this tree"]])
    lines = []
    for name, runs in results.items():
        per = [r["instructions"] for r in runs]
        per_txn = median([args.count / r["txns"] for r in runs if r["txns"]])
        marker = "" if all(r["conditions"] for r in runs) else " (no conditions)"
        lines.append(
            f"{name}{marker}: **{median(per) / 1e3:.0f}k** instructions per commit "
            f"(runs {' '.join(f'{p / 1e3:.0f}k' for p in per)}; this tree / it "
            f"{first / median(per):.2f}), {per_txn:.1f} commits/Txn"
        )
    text = (
        f"**Instructions per commit, in-process (callgrind)** ({args.count} commits at "
        f"{args.concurrency} concurrent, two storages on one prefix, {args.rounds} rounds"
        f"{', two conditions per commit' if args.conditions else ''}):  \n"
        + "  \n".join(lines)
        + f"  \nCommand: `.venv/bin/python bench/etcd/{HERE.name} {' '.join(sys.argv[1:])}`"
        + f"  \nMachine: {machine()}"
    )
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument(
        "--against", metavar="SRC", action="append", default=[], help="another checkout's src/"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--conditions", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
