"""Requests/s through `AsyncServiceClient` vs a plain `httpx.AsyncClient`.

Same backend (one instance answering at once, in its own process), same
concurrency, closed loop; runs alternate to spread machine noise evenly.

    .venv/bin/python bench/client/throughput.py --seconds 4 --concurrency 16 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
from _common import start_backends, stop, wait_for_quiet

import waypost


async def closed_loop(
    client: httpx.AsyncClient, path: str, seconds: float, concurrency: int
) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            response = await client.get(path)
            assert response.status_code == 200
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def plain(port: int, seconds: float, concurrency: int) -> float:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await closed_loop(client, "/", 0.5, concurrency)
        return await closed_loop(client, "/", seconds, concurrency)


async def waypost_client(port: int, seconds: float, concurrency: int, balancer: str) -> float:
    async with (
        waypost.AsyncDiscovery(f"static://127.0.0.1:{port}") as discovery,
        waypost.AsyncServiceClient("backend", discovery=discovery, balancer=balancer) as client,
    ):
        await closed_loop(client, "/", 0.5, concurrency)
        return await closed_loop(client, "/", seconds, concurrency)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--balancer", default="peak_ewma")
    args = parser.parse_args()
    proc, [port] = start_backends(1, 0.0, 0.0)
    base, ours = [], []
    try:
        for _ in range(args.rounds):
            wait_for_quiet()
            base.append(await plain(port, args.seconds, args.concurrency))
            ours.append(await waypost_client(port, args.seconds, args.concurrency, args.balancer))
    finally:
        stop(proc)
    row = {
        "httpx_rps": statistics.median(base),
        "waypost_rps": statistics.median(ours),
        "ratio": statistics.median(ours) / statistics.median(base),
        "runs_httpx": [round(x) for x in base],
        "runs_waypost": [round(x) for x in ours],
    }
    print(json.dumps(row))


if __name__ == "__main__":
    asyncio.run(main())
