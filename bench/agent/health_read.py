"""`GET /v1/health/service/<name>?passing` for a 10-instance service, keep-alive, with wrk.

Ten instances of `web`, each with a passing TTL check, are registered on an
agent with the sqlite store; then `wrk` (the Debian package) hammers the read
over a few keep-alive connections. wrk and the agent share this machine's cores.

`--gzip` adds `-H 'Accept-Encoding: gzip'`, as Go's and Python's HTTP clients
send it (the agent then answers ~1 KB gzipped instead of 10 KB; wrk does not
decompress, it counts the answers).

Usage: .venv/bin/python bench/agent/health_read.py [--reps 3] [--duration 10]
       [--connections 8] [--threads 1] [--gzip]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

import httpx
from _common import agent, cpu_seconds, header, line, median

SERVICE = "web"


def setup(base: str) -> str:
    with httpx.Client(base_url=base, timeout=30) as http:
        for i in range(10):
            body = {
                "Name": SERVICE,
                "ID": f"{SERVICE}-{i}",
                "Address": f"10.0.0.{i + 1}",
                "Port": 8080,
                "Tags": ["v1"],
                "Check": {"CheckID": f"{SERVICE}-{i}-ttl", "TTL": "10m", "Status": "passing"},
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
        resp = http.get(f"/v1/health/service/{SERVICE}?passing")
        resp.raise_for_status()
        assert len(resp.json()) == 10, resp.text
        return f"{base}/v1/health/service/{SERVICE}?passing"


def run_wrk(
    url: str, threads: int, connections: int, duration: int, extra: list[str]
) -> tuple[float, str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", *extra, url]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, timeout=duration + 30
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        line("wrk reported errors:\n" + out)
    p99 = re.search(r"99%\s+(\S+)", out)
    return rate, p99.group(1) if p99 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per repetition")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gzip", action="store_true", help="send Accept-Encoding: gzip")
    args = parser.parse_args()
    extra = ["-H", "Accept-Encoding: gzip"] if args.gzip else []
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    header(
        f"GET /v1/health/service/{SERVICE}?passing (10 instances), "
        f"wrk -t{args.threads} -c{args.connections} {' '.join(extra)}"
    )
    rates = []
    with agent("sqlite") as proc:
        url = setup(proc.http_url)
        line(f"url: {url}")
        run_wrk(url, args.threads, args.connections, 2, extra)  # warm-up
        for rep in range(args.reps):
            cpu0 = cpu_seconds(proc.proc.pid)  # type: ignore[union-attr]
            rate, p99 = run_wrk(url, args.threads, args.connections, args.duration, extra)
            cpu = (cpu_seconds(proc.proc.pid) - cpu0) / args.duration * 100  # type: ignore[union-attr]
            rates.append(rate)
            line(f"rep {rep + 1}: {rate:8.0f} req/s  p99 {p99}  agent CPU {cpu:.0f}% of one core")
    m = median(rates)
    line(f"median: {m:.0f} req/s (target >= 20,000: {'PASS' if m >= 20_000 else 'MISS'})")


if __name__ == "__main__":
    main()
