"""Every target of issue 13 (agent performance) in one command, each by its own benchmark.

The five benchmarks run one after the other, never together (each needs the
machine to itself), with the commands docs/benchmarks.md gives for them:

- registrations.py: durable registrations vs single-node etcd's gRPC client
- health_read.py: `GET /v1/health/service/web?passing`, keep-alive (needs wrk)
- blocking.py: 10,000 blocking queries, one change
- ../etcd/registrations.py: registrations through two agents on etcd vs raw puts
  (it also rewrites its generated block of docs/benchmarks.md)
- scale.py: 1,000,000 instances (replay, RSS, churn wake-up); `--store` keeps
  the filled store between runs (~1-2 min to fill when it is missing)

Each one's whole output goes to `--logs/<name>-<run>.log`; this prints the
lines where a benchmark judges a target (its "PASS"/"MISS" lines, and the
etcd ratio), per run. It judges nothing itself: the figures and their
verdicts are the benchmarks' own. About 2 minutes per run here with the scale
store already filled.

Usage: make bench (one run), or
       .venv/bin/python bench/agent/targets.py [--runs 1] [--only NAME,...]
       [--store /tmp/scale-1m.db] [--logs /tmp/waypost-targets]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
# name -> the command after the interpreter; `{store}` is --store.
COMMANDS: dict[str, str] = {
    "registrations": "agent/registrations.py --reps 5 --count 3000 --etcdctl-count 0",
    "health_read": "agent/health_read.py --reps 3 --duration 10",
    "blocking": "agent/blocking.py --reps 3",
    "etcd_registrations": "etcd/registrations.py --count 3000 --concurrency 64 --reps 5",
    "scale": "agent/scale.py --reps 1 --seconds 30 --store {store}",
}
# The lines that carry a verdict: the agent benchmarks' "(target ...: PASS)"
# and the etcd benchmark's summary ("ratio **0.60** (target >= 0.5)").
VERDICT = re.compile(r"\(target [^)]*: (PASS|MISS)\)|ratio \*\*[0-9.]+\*\* \(target")


def run(name: str, index: int, store: str, logs: Path) -> list[str]:
    """Run one benchmark once; its verdict lines (or why there are none)."""
    command = [sys.executable, *(arg.format(store=store) for arg in COMMANDS[name].split())]
    command[1] = str(BENCH / command[1])
    log = logs / f"{name}-{index}.log"
    with log.open("w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=BENCH.parent)
    found = [text.strip() for text in log.read_text().splitlines() if VERDICT.search(text)]
    if code != 0:
        found.append(f"exited with {code}: see {log}")
    return found or [f"no verdict line: see {log}"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each benchmark (default 1)")
    parser.add_argument(
        "--only", default="", help="a comma-separated subset of: " + ", ".join(COMMANDS)
    )
    parser.add_argument("--store", default="/tmp/scale-1m.db", help="scale.py's kept store")
    parser.add_argument("--logs", default="/tmp/waypost-targets", help="where the outputs go")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(COMMANDS)
    unknown = sorted(set(names) - set(COMMANDS))
    if unknown or args.runs < 1:
        parser.error(
            f"unknown benchmark {', '.join(unknown)}" if unknown else "--runs must be >= 1"
        )
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    for index in range(1, args.runs + 1):
        for name in names:
            print(f"{name}, run {index}:", flush=True)
            for verdict in run(name, index, args.store, logs):
                print(f"  {verdict}", flush=True)


if __name__ == "__main__":
    main()
