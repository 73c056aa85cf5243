"""A blocking KV watch's wake-up latency: waypost's `?index=` long-poll against an etcd watch.

Each round: the watcher is parked on one key (waypost: `GET /v1/kv/<key>?index=N`,
etcd: a watch stream on the JSON gateway, created once), then the writer puts
the key and the time until the watcher holds the new value is taken. The
write's own durable commit (sqlite fsync, etcd WAL fsync) is inside the
figure for both. 500 other keys change between rounds on waypost, none of
which may wake the watcher (counted).

Usage: .venv/bin/python bench/kv/watch.py [--rounds 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from _common import agent, etcd, header, line, median, percentile


async def waypost_rounds(base: str, rounds: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    spurious = 0
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/v1/kv/watched", data=b"0") as r:
            await r.read()
        for i in range(rounds):
            async with http.get(f"{base}/v1/kv/watched") as r:
                index = r.headers["X-Consul-Index"]
                await r.read()
            watcher = asyncio.ensure_future(
                http.get(f"{base}/v1/kv/watched?index={index}&wait=30s")
            )
            for k in range(5):  # unrelated keys: must not wake it
                async with http.put(f"{base}/v1/kv/other/{i}/{k}", data=b"x") as r:
                    await r.read()
            await asyncio.sleep(0.02)
            if watcher.done():
                spurious += 1
            started = time.perf_counter()
            async with http.put(f"{base}/v1/kv/watched", data=str(i).encode()) as r:
                await r.read()
            response = await watcher
            await response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            response.release()
    return latencies, spurious


async def etcd_rounds(base: str, rounds: int) -> list[float]:
    key = base64.b64encode(b"/watched").decode()
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        stream = await http.post(f"{base}/v3/watch", json={"create_request": {"key": key}})
        await stream.content.readline()  # "created"
        for i in range(rounds):
            await asyncio.sleep(0.02)
            started = time.perf_counter()
            body = {"key": key, "value": base64.b64encode(str(i).encode()).decode()}
            async with http.post(f"{base}/v3/kv/put", json=body) as r:
                await r.read()
            event = json.loads(await stream.content.readline())
            assert event["result"]["events"], event
            latencies.append((time.perf_counter() - started) * 1000)
        stream.close()
    return latencies


def summary(name: str, values: list[float]) -> str:
    s = sorted(values)
    return (
        f"{name}: median {median(s):.2f} ms, p90 {percentile(s, 90):.2f} ms, "
        f"p99 {percentile(s, 99):.2f} ms, max {s[-1]:.2f} ms ({len(s)} wake-ups)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    header(f"blocking KV watch wake-up latency, {args.rounds} rounds x {args.reps}")
    medians: dict[str, list[float]] = {"waypost": [], "etcd": []}
    with agent("sqlite") as proc, etcd() as (etcd_url, _):
        for rep in range(args.reps):
            w, spurious = asyncio.run(waypost_rounds(proc.http_url, args.rounds))
            e = asyncio.run(etcd_rounds(etcd_url, args.rounds))
            medians["waypost"].append(median(sorted(w)))
            medians["etcd"].append(median(sorted(e)))
            line(f"rep {rep + 1}: {summary('waypost', w)}; woken by other keys: {spurious}")
            line(f"rep {rep + 1}: {summary('etcd   ', e)}")
    for name, values in medians.items():
        s = sorted(values)
        line(f"median of medians {name}: {median(s):.2f} ms (spread {s[0]:.2f}-{s[-1]:.2f})")


if __name__ == "__main__":
    main()
