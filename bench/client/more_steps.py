"""Linkerd's "adding more steps" scenario, latencies scaled 10x down.

10 backends with added latency 0, 1, 2, 4, 8, 16, 32, 64, 100 and 200 ms; the
100 ms one answers 503 40 % of the time, the 200 ms one 60 % (the original:
0 ms to 2 s, success 60 % and 40 %). Open-loop GETs after a warm-up of one
second's worth of requests; success means a final 200.

Compared: round robin alone (no retries, breakers or ejection), peak EWMA alone,
and peak EWMA with the client's defaults (breakers, outlier ejection, retries to
another instance under the budget). Linkerd's figures for the last, unscaled:
p50 42 ms, p99 734 ms, 100 % success; round robin p50 86 ms, p99 2100 ms, 88 %.

    .venv/bin/python bench/client/more_steps.py --duration 8 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx
from _common import percentile, start_backends, stop, wait_for_quiet

import waypost
from waypost.client import RetryPolicy

SPEC = "0,1,2,4,8,16,32,64,100:0.4,200:0.6"
VARIANTS = {
    "round_robin (no retries/breakers)": {
        "balancer": "round_robin",
        "retry": RetryPolicy(attempts=1),
        "breaker": None,
        "outlier": None,
    },
    "peak_ewma (no retries/breakers)": {
        "balancer": "peak_ewma",
        "retry": RetryPolicy(attempts=1),
        "breaker": None,
        "outlier": None,
    },
    "peak_ewma + defaults (breakers, ejection, retries)": {"balancer": "peak_ewma"},
}


async def run(name: str, ports: list[int], duration: float, rate: float) -> dict[str, Any]:
    wait_for_quiet()
    options: dict[str, Any] = dict(VARIANTS[name])
    if options["balancer"] == "peak_ewma":
        options["balancer_options"] = {"tau": 1.0, "default_rtt": 0.003}
    url = "static://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    results: list[tuple[float, bool]] = []
    async with (
        waypost.AsyncDiscovery(url) as discovery,
        waypost.AsyncServiceClient(
            "backend", discovery=discovery, seed=1, timeout=5.0, **options
        ) as client,
    ):

        async def one() -> None:
            started = time.perf_counter()
            try:
                ok = (await client.get("/work")).status_code == 200
            except (httpx.HTTPError, waypost.ClientError):
                ok = False
            results.append((time.perf_counter() - started, ok))

        tasks: set[asyncio.Task[None]] = set()
        await asyncio.gather(*(one() for _ in range(int(rate))))  # warm-up, not counted
        results.clear()
        start, sent = time.perf_counter(), 0
        while (now := time.perf_counter() - start) < duration:
            for _ in range(int(now * rate) - sent):
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    latencies = sorted(lat for lat, _ in results)
    return {
        "variant": name,
        "requests": len(results),
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "success": 100.0 * sum(ok for _, ok in results) / max(1, len(results)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    proc, ports = start_backends(10, 0.0, 0.0002, SPEC)
    try:
        for name in VARIANTS:
            runs = [await run(name, ports, args.duration, args.rate) for _ in range(args.repeat)]
            keys = ["p50", "p99", "success", "requests"]
            row = {**runs[0], **{k: statistics.median(r[k] for r in runs) for k in keys}}
            print(json.dumps(row), flush=True)
    finally:
        stop(proc)


if __name__ == "__main__":
    asyncio.run(main())
