"""Helpers shared by the client benchmarks: processes, percentiles, machine info."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def start_backends(
    count: int, latency: float, sd: float, spec: str = ""
) -> tuple[subprocess.Popen[str], list[int]]:
    """Start the backend process; returns it and the ports it listens on."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "_backends.py"),
            "--count",
            str(count),
            "--latency",
            str(latency),
            "--sd",
            str(sd),
            "--spec",
            spec,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ports: list[int] = json.loads(proc.stdout.readline())["ports"]
    return proc, ports


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def machine() -> str:
    """`nproc`, CPU model and Python version, for the results file."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs (`nproc`), {model}, Python {platform.python_version()} "
        f"({platform.system()} {platform.release()})"
    )


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return idle, sum(fields)


def busy_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (anyone's work) over `seconds`."""
    import time

    idle0, total0 = _cpu_times()
    time.sleep(seconds)
    idle1, total1 = _cpu_times()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(threshold: float = 0.3, max_wait: float = 30.0) -> float:
    """Wait (up to `max_wait` s) until other processes leave the CPUs mostly idle.

    The machine is shared; starting a latency run while something else keeps
    both cores busy measures the neighbour, not the client. Returns the busy
    share seen last (reported next to the figures).
    """
    import time

    deadline = time.monotonic() + max_wait
    share = busy_share()
    while share > threshold and time.monotonic() < deadline:
        share = busy_share()
    return share
