"""KV puts/s and CAS puts/s: waypost's KV store (sqlite) against a single-node etcd, same run.

Both durable (waypost answers after sqlite's fsync, etcd after its WAL's),
both driven by the same client (aiohttp, CONCURRENCY keep-alive connections,
unique keys, 100-byte values):

- waypost put: `PUT /v1/kv/<key>`; CAS: `PUT /v1/kv/<key>?cas=0` (create only:
  a condition the store checks atomically with the write).
- etcd put: `POST /v3/kv/put` on the JSON gateway; CAS: `POST /v3/kv/txn`
  comparing the key's create revision with 0, then putting it (the same
  create-only check).

Usage: .venv/bin/python bench/kv/puts.py [--reps 5] [--count 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from _common import agent, cpu_seconds, etcd, header, line, median

VALUE = b"v" * 100
Request = Callable[[aiohttp.ClientSession, int], Awaitable[None]]


async def drive(count: int, concurrency: int, request: Request) -> float:
    """`count` requests over `concurrency` connections, after a warm-up; requests/s."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        seq = 0

        async def run(total: int) -> None:
            nonlocal seq
            limit = seq + total

            async def worker() -> None:
                nonlocal seq
                while seq < limit:
                    seq += 1
                    await request(session, seq)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await run(concurrency * 4)
        started = time.perf_counter()
        await run(count)
        return count / (time.perf_counter() - started)


def waypost_put(base: str, run: int, cas: bool) -> Request:
    query = "?cas=0" if cas else ""

    async def request(session: aiohttp.ClientSession, i: int) -> None:
        async with session.put(f"{base}/v1/kv/bench/{run}/{cas:d}/{i}{query}", data=VALUE) as r:
            if r.status != 200 or await r.read() != b"true":
                raise RuntimeError(f"put failed: {r.status} {await r.text()}")

    return request


def etcd_put(base: str, run: int, cas: bool) -> Request:
    async def request(session: aiohttp.ClientSession, i: int) -> None:
        key = base64.b64encode(f"/kv/{run}/{cas:d}/{i}".encode()).decode()
        value = base64.b64encode(VALUE).decode()
        if cas:
            body = {
                "compare": [
                    {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                ],
                "success": [{"requestPut": {"key": key, "value": value}}],
            }
            path = "/v3/kv/txn"
        else:
            body, path = {"key": key, "value": value}, "/v3/kv/put"
        async with session.post(f"{base}{path}", json=body) as r:
            answer = await r.json()
            if r.status != 200 or (cas and not answer.get("succeeded")):
                raise RuntimeError(f"etcd {path} failed: {r.status} {answer}")

    return request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    header(f"durable KV puts/s, concurrency {args.concurrency}, {args.count} per repetition")
    names = ("waypost put", "waypost cas", "etcd put", "etcd cas")
    results: dict[str, list[float]] = {n: [] for n in names}
    with agent("sqlite") as proc, etcd() as (etcd_url, etcd_pid):
        pids = {"waypost": proc.proc.pid, "etcd": etcd_pid}  # type: ignore[union-attr]
        for run in range(args.reps):
            order = names if run % 2 == 0 else names[::-1]  # neither always on a warmer disk
            for name in order:
                system, kind = name.split()
                make = waypost_put if system == "waypost" else etcd_put
                base = proc.http_url if system == "waypost" else etcd_url
                cpu0 = cpu_seconds(pids[system])
                rate = asyncio.run(
                    drive(args.count, args.concurrency, make(base, run, kind == "cas"))
                )
                server_us = (cpu_seconds(pids[system]) - cpu0) / args.count * 1e6
                results[name].append(rate)
                line(
                    f"rep {run + 1}: {name:12s} {rate:7.0f}/s  server CPU {server_us:.0f} us/write"
                )
    for name in names:
        values = sorted(results[name])
        line(f"median {name}: {median(values):.0f}/s (min {values[0]:.0f}, max {values[-1]:.0f})")
    for kind in ("put", "cas"):
        ratios = [
            w / e for w, e in zip(results[f"waypost {kind}"], results[f"etcd {kind}"], strict=True)
        ]
        line(f"waypost/etcd {kind} per repetition: {' '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
