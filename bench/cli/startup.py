"""What a `waypost` command costs before it does anything, per tree.

    .venv/bin/python bench/cli/startup.py --tree /path/to/old/checkout --tree .

For each tree (its `src/` on PYTHONPATH), alternating A B A B: the import time
of `waypost.cli.main` (`-X importtime`), and the wall time of `waypost --help`,
`waypost services --help` and `waypost services -http-addr ...` against one
`--dev` agent (started from this checkout). Medians with every repetition.
Wall time swings 2x on a shared machine, so `--callgrind` adds the
instructions of `waypost --help` and `waypost services` under callgrind
(the whole process: interpreter start, imports, the request), which do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from _common import agent, header, line

CLI = ("-m", "waypost.cli.main")


def run(tree: str, *argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}/src"}
    cmd = [*prefix, sys.executable, *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{cmd} in {tree}: exit {done.returncode}: {done.stderr[-500:]}")
    return done


def import_seconds(tree: str) -> float:
    err = run(tree, "-X", "importtime", "-c", "import waypost.cli.main").stderr
    last = [row for row in err.splitlines() if row.rstrip().endswith("| waypost.cli.main")][-1]
    return int(last.split("|")[1]) / 1e6  # cumulative microseconds


def wall(tree: str, *argv: str) -> float:
    start = time.perf_counter()
    run(tree, *CLI, *argv)
    return time.perf_counter() - start


def instructions(tree: str, *argv: str) -> int:
    """The whole process's instructions: interpreter start, imports, the command."""
    with tempfile.TemporaryDirectory(prefix="waypost-bench-cli-") as tmp:
        out = f"{tmp}/callgrind.out"
        grind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")
        run(tree, *CLI, *argv, prefix=grind)
        totals = [
            r for r in Path(out).read_text().splitlines() if r.startswith(("summary:", "totals:"))
        ]
        return int(totals[0].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="a checkout (repeatable)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--callgrind", action="store_true", help="also count instructions (valgrind)"
    )
    args = parser.parse_args()
    header(f"waypost CLI start-up, {args.reps} repetitions per tree, trees alternating")
    with agent("memory") as proc:
        addr = f"127.0.0.1:{proc.http_port}"
        cases: dict[str, Callable[[str], float]] = {
            "import waypost.cli.main": import_seconds,
            "waypost --help": lambda t: wall(t, "--help"),
            "waypost services --help": lambda t: wall(t, "services", "--help"),
            "waypost services (dev agent)": lambda t: wall(t, "services", "-http-addr", addr),
        }
        got: dict[tuple[str, str], list[float]] = {(c, t): [] for c in cases for t in args.tree}
        for _ in range(args.reps):
            for case, measure in cases.items():
                for tree in args.tree:
                    got[(case, tree)].append(measure(tree))
        if args.callgrind:
            for argv in (("--help",), ("services", "-http-addr", addr)):
                for tree in args.tree:
                    count = instructions(tree, *argv)
                    line(f"{' '.join(argv[:1]) + ', instructions':30s} {tree:24s} {count:,}")
    line(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for case in cases:
        for tree in args.tree:
            ms = [v * 1000 for v in got[(case, tree)]]
            reps = " ".join(f"{v:.0f}" for v in ms)
            line(f"{case:30s} {tree:24s} median {statistics.median(ms):5.0f} ms  [{reps}]")


if __name__ == "__main__":
    main()
