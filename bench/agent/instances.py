"""100,000 registered instances: the agent's resident memory.

Third-party registrations through `PUT /v1/catalog/register` (64 concurrent
keep-alive connections, aiohttp) on an agent with the sqlite store: NODES nodes
with INSTANCES/NODES instances each, spread over SERVICES service names, each
instance with one passing service check (what a real registration carries;
`--no-checks` leaves them out). The agent's VmRSS is read once all are in,
after a full read of the catalog (`/v1/catalog/services`) and a restart
replay is measured too (the same data directory, loaded from disk).

Usage: .venv/bin/python bench/agent/instances.py [--reps 3] [--instances 100000] [--no-checks]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time

import aiohttp
import httpx
from _common import AgentProcess, header, line, median, rss_mb

NODES = 1000
SERVICES = 2000


def body(i: int, with_check: bool) -> bytes:
    node = f"node-{i % NODES}"
    name = f"svc-{i % SERVICES}"
    sid = f"{name}-{i}"
    data: dict[str, object] = {
        "Node": node,
        "Address": f"10.{i % NODES >> 8}.{i % NODES & 255}.1",
        "Service": {
            "ID": sid,
            "Service": name,
            "Address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            "Port": 8000 + i % 1000,
            "Tags": ["v1", "prod"],
            "Meta": {"version": "1.2.3"},
        },
        "SkipNodeUpdate": True,
    }
    if with_check:
        data["Check"] = {
            "CheckID": f"service:{sid}",
            "Name": f"{name} health",
            "Status": "passing",
            "ServiceID": sid,
            "Output": "HTTP GET http://10.0.0.1:8000/health: 200 OK Output: ok",
        }
    return json.dumps(data).encode()


async def register(base: str, count: int, with_check: bool) -> float:
    url = f"{base}/v1/catalog/register"
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        todo = iter(range(count))

        async def worker() -> None:
            for i in todo:
                async with session.put(url, data=body(i, with_check)) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"register failed: {resp.status} {await resp.text()}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        return count / (time.perf_counter() - started)


def one_run(count: int, with_check: bool) -> tuple[float, float, float, float]:
    """(registrations/s, RSS after registering, RSS after a restart replay, replay seconds)."""
    tmp = tempfile.mkdtemp(prefix="waypost-bench-")
    args = (
        "--data-dir",
        tmp,
        "--http",
        "127.0.0.1:0",
        "--dns",
        "off",
        "--node",
        "n1",
        "--log-level",
        "warning",
    )
    try:
        proc = AgentProcess(*args).start()
        try:
            with httpx.Client(base_url=proc.http_url, timeout=120) as http:
                # the agent's own instances (its `consul` service) are there before ours
                own = int(http.get("/v1/agent/self").json()["Stats"]["catalog"]["instances"])
            rate = asyncio.run(register(proc.http_url, count, with_check))
            with httpx.Client(base_url=proc.http_url, timeout=120) as http:
                stats = http.get("/v1/agent/self").json()["Stats"]["catalog"]
                assert int(stats["instances"]) == count + own, stats
                http.get("/v1/catalog/services").raise_for_status()
            rss = rss_mb(proc.proc.pid)  # type: ignore[union-attr]
        finally:
            proc.stop()
        t = time.monotonic()
        proc = AgentProcess(*args).start()
        try:
            replay = time.monotonic() - t
            reloaded = rss_mb(proc.proc.pid)  # type: ignore[union-attr]
        finally:
            proc.stop()
        return rate, rss, reloaded, replay
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--no-checks", action="store_true")
    args = parser.parse_args()
    with_check = not args.no_checks
    header(
        f"{args.instances} instances on {NODES} nodes, {SERVICES} services, "
        f"{'one check each' if with_check else 'no checks'}"
    )
    rss_values, reload_values = [], []
    for rep in range(args.reps):
        rate, rss, reloaded, replay = one_run(args.instances, with_check)
        rss_values.append(rss)
        reload_values.append(reloaded)
        line(
            f"rep {rep + 1}: registered at {rate:.0f}/s; agent RSS {rss:.0f} MB; "
            f"after restart (replay {replay:.1f} s) {reloaded:.0f} MB"
        )
    m = median(rss_values)
    line(
        f"median agent RSS: {m:.0f} MB (after restart {median(reload_values):.0f} MB) "
        f"(target <= 500 MB: {'PASS' if max(m, median(reload_values)) <= 500 else 'MISS'})"
    )


if __name__ == "__main__":
    main()
