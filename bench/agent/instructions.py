"""Instructions per durable registration in the agent process, counted by callgrind.

Wall-clock rates on a shared 2-core machine vary by 2x from run to run;
instruction counts do not (valgrind counts the same total for the same code
and inputs whatever else runs). So this compares trees, e.g. before and after
a change to the write path:

    .venv/bin/python bench/agent/instructions.py --tree /path/to/old/checkout --tree .

Each tree's agent (its `src/` on PYTHONPATH) runs under
`valgrind --tool=callgrind --instr-atstart=no`; after a warm-up of 200
registrations, instrumentation is switched on for COUNT registrations
(16 concurrent keep-alive connections, unique services, no checks) and off
again. Only the agent process is counted (all its threads: the event loop and
the sqlite writer), not the client.

`--dump DIR` keeps callgrind's output, one file per thread
(`--separate-threads=yes`: the loop, the sqlite writer, the WAL
checkpointer), prints each thread's share, and leaves the files for
`callgrind_annotate --inclusive=yes` (docs/benchmarks.md, Agent 6: the
per-layer table).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from _common import header, line


def body(i: int) -> bytes:
    return json.dumps(
        {
            "Name": f"bench-{i % 100}",
            "ID": f"bench-{i}",
            "Address": "10.0.0.1",
            "Port": 8000 + i % 1000,
            "Tags": ["v1", "bench"],
            "Meta": {"version": "1.2.3"},
        }
    ).encode()


async def drive(url: str, count: int, offset: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with gate, session.put(f"{url}/v1/agent/service/register", data=body(i)) as r:
                assert r.status == 200, await r.text()

        await asyncio.gather(*(one(offset + i) for i in range(count)))


def start(
    tree: Path, out: str, data: str, threads: bool = False
) -> tuple[subprocess.Popen[str], str]:
    src = tree / "src"
    help_text = subprocess.run(
        [sys.executable, "-m", "waypost.cli.main", "agent", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    ).stdout
    extra = ["--grpc", "off"] if "--grpc" in help_text else []  # never bind 8502
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        *(["--separate-threads=yes"] if threads else []),
        sys.executable, "-m", "waypost.cli.main", "agent", "--data-dir", data,
        "--http", "127.0.0.1:0", "--dns", "off", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    url = ""
    assert proc.stdout is not None
    for text in proc.stdout:
        if m := re.match(r"HTTP API: (http://\S+)", text):
            url = m.group(1)
        if text.startswith("waypost agent running"):
            return proc, url
    raise RuntimeError(f"the agent of {tree} did not start")


def instructions(tree: Path, count: int, dump: Path | None = None) -> float:
    # The agent's data (and callgrind's output, unless kept) in one directory, removed after.
    with tempfile.TemporaryDirectory(prefix="waypost-instructions-") as tmp:
        return _counted(tree, count, f"{dump or tmp}/callgrind.out", f"{tmp}/data", dump)


def _counted(tree: Path, count: int, out: str, data: str, dump: Path | None) -> float:
    proc, url = start(tree, out, data, threads=dump is not None)
    try:
        asyncio.run(drive(url, 200, 10**6))  # warm-up: imports, caches, first pages
        subprocess.run(
            ["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True
        )
        asyncio.run(drive(url, count, 0))
        subprocess.run(
            ["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True
        )
    finally:
        proc.terminate()
        proc.wait(120)
    totals = {}
    for path in glob.glob(out + "*"):
        for text in Path(path).read_text(errors="replace").splitlines():
            if text.startswith(("summary:", "totals:")):
                totals[path] = max(totals.get(path, 0), int(text.split()[1]))
    if dump is not None:  # one file per thread: say what each counted
        for path, total in sorted(totals.items()):
            line(f"  {path}: {total / count / 1e3:.1f}k per registration")
    return sum(totals.values()) / count


def _instrument(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], capture_output=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, required=True, help="a checkout")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument(
        "--dump",
        type=Path,
        help="keep callgrind's files here, one per thread (read with callgrind_annotate)",
    )
    args = parser.parse_args()
    header(f"instructions per durable registration (callgrind), {args.count} registrations")
    first = None
    for n, tree in enumerate(args.tree):
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dump = None
        if args.dump is not None:
            dump = args.dump / f"{n}-{rev}"
            dump.mkdir(parents=True, exist_ok=True)
        per = instructions(tree.resolve(), args.count, dump)
        first = first or per
        line(f"{tree} ({rev}): {per / 1e3:.0f}k instructions per registration ({per / first:.2f}x)")


if __name__ == "__main__":
    main()
