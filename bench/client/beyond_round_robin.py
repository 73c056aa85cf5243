"""Linkerd's "Beyond Round Robin" scenario, every balancer, latencies scaled 10x down.

11 backends answer in ~16.7 ms (sd 0.5 ms); one of them answers in 200 ms for
the middle half of the run (the original: 167 ms, 2 s, 60 s at 1000 req/s).
Open-loop load at `--rate` req/s through `AsyncServiceClient` with a static
discovery list and no retries, breakers or outlier ejection, so only the
balancer differs. As in the original, latency is measured to completion and a
request succeeds if it answers 200 within the (scaled) 1 s timeout: 100 ms. Peak EWMA's time
constants are scaled with everything else (tau 1 s, default RTT 3 ms).

    .venv/bin/python bench/client/beyond_round_robin.py --duration 10 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import httpx
from _common import percentile, start_backends, stop, wait_for_quiet

import waypost
from waypost.client import HedgePolicy, RetryPolicy

BALANCERS = [
    "round_robin",
    "random",
    "least_outstanding",
    "weighted",
    "p2c",
    "peak_ewma",
    "ring_hash",
    "maglev",
    "round_robin+hedge",
    "peak_ewma+hedge",
]
TIMEOUT = 0.1
SLOW = 0.2


def client_for(variant: str, discovery: waypost.AsyncDiscovery) -> waypost.AsyncServiceClient:
    """A client with one balancer; `<name>+hedge` adds hedging at the recent p95."""
    balancer, _, hedged = variant.partition("+")
    extra: dict[str, Any] = {}
    if hedged:
        extra["hedge"] = HedgePolicy(percentile=0.95, min_samples=50)
    if balancer == "peak_ewma":
        extra["balancer_options"] = {"tau": 1.0, "default_rtt": 0.003}
    if balancer == "maglev":
        extra["balancer_options"] = {"table_size": 4099}
    return waypost.AsyncServiceClient(
        "backend",
        discovery=discovery,
        balancer=balancer,
        retry=RetryPolicy(attempts=1),
        breaker=None,
        outlier=None,
        timeout=5.0,
        seed=1,
        **extra,
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000),
    )


async def one(client: waypost.AsyncServiceClient, out: list[tuple[float, bool]]) -> None:
    started = time.perf_counter()
    try:
        response = await client.get("/work")
        ok = response.status_code == 200
    except httpx.HTTPError:
        ok = False
    latency = time.perf_counter() - started
    out.append((latency, ok and latency <= TIMEOUT))


async def run(
    balancer: str, ports: list[int], duration: float, rate: float, slow: bool
) -> dict[str, Any]:
    idle_before = wait_for_quiet()
    url = "static://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    results: list[tuple[float, bool]] = []
    async with waypost.AsyncDiscovery(url) as discovery, client_for(balancer, discovery) as client:
        for _ in range(50):  # warm connections
            await one(client, [])
        control = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}")
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        sent, slow_on, slow_off = 0, False, False
        while (now := time.perf_counter() - start) < duration:
            if slow and not slow_on and now >= duration / 4:
                await control.get(f"/__slow__?ms={SLOW * 1000:.0f}")
                slow_on = True
            if slow_on and not slow_off and now >= 3 * duration / 4:
                await control.get("/__slow__?ms=0")
                slow_off = True
            due = int(now * rate) - sent
            for _ in range(due):
                task = asyncio.create_task(one(client, results))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent += due
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        await control.get("/__slow__?ms=0")
        await control.aclose()
    latencies = sorted(lat for lat, _ in results)
    return {
        "load": os.getloadavg()[0],
        "busy_before": idle_before,
        "balancer": balancer,
        "slow": slow,
        "requests": len(results),
        "p50": percentile(latencies, 0.50) * 1000,
        "p95": percentile(latencies, 0.95) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "p999": percentile(latencies, 0.999) * 1000,
        "success": 100.0 * sum(ok for _, ok in results) / max(1, len(results)),
    }


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["p50", "p95", "p99", "p999", "success", "requests", "load"]
    return {**rows[0], **{k: statistics.median(r[k] for r in rows) for k in keys}}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--balancers", default=",".join(BALANCERS))
    parser.add_argument("--json", default=None, help="write rows to this file")
    args = parser.parse_args()
    proc, ports = start_backends(11, 0.0167, 0.0005)
    rows = []
    try:
        for balancer in args.balancers.split(","):
            for slow in (False, True):
                runs = [
                    await run(balancer, ports, args.duration, args.rate, slow)
                    for _ in range(args.repeat)
                ]
                row = median_row(runs)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stop(proc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
