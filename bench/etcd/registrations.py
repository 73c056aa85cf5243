"""Durable registrations through agents vs raw etcd puts, same cluster, same run.

- agents: `PUT /v1/agent/service/register` spread over two `waypost agent`
  processes on the etcd cluster (aiohttp, CONCURRENCY keep-alive connections
  in total); each answer means: one etcd Txn committed by a quorum and applied
  to the agent's mirror through its watch.
- raw: `KV.Put` of the same body under unique keys, with the client library
  waypost itself uses (aetcd's stubs on grpc.aio), from one process, same
  concurrency, to the same first endpoint the agents use.

Target: agents / raw >= 0.5. Usage:
    .venv/bin/python bench/etcd/registrations.py [--count 3000] [--concurrency 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc.aio
from _common import agents, cluster, machine, median, write_result
from aetcd import rpc


def body(run: int, i: int) -> bytes:
    return json.dumps(
        {
            "Name": f"bench-{run}-{i % 100}",
            "ID": f"bench-{run}-{i}",
            "Address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            "Port": 8000 + i % 1000,
            "Tags": ["v1", "bench"],
            "Meta": {"version": "1.2.3"},
        }
    ).encode()


async def drive(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run `one(i)` for i < count with `concurrency` workers; return operations per second."""
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def through_agents(urls: list[str], run: int, count: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            url = f"{urls[i % len(urls)]}/v1/agent/service/register"
            async with session.put(url, data=body(run, i)) as response:
                if response.status != 200:
                    text = await response.text()
                    raise RuntimeError(f"registration refused: {response.status} {text}")

        return await drive(count, concurrency, one)


async def raw_puts(endpoint: str, run: int, count: int, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc.KVStub(channel)

        async def one(i: int) -> None:
            await kv.Put(rpc.PutRequest(key=f"/bench-raw/{run}/{i}".encode(), value=body(run, i)))

        return await drive(count, concurrency, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    agent_rates, raw_rates = [], []
    with cluster() as etcd, agents(etcd, "node-a", "node-b") as procs:
        urls = [p.http_url for p in procs]
        for rep in range(args.reps):
            endpoint = etcd.members[0].endpoint
            raw_rates.append(asyncio.run(raw_puts(endpoint, rep, args.count, args.concurrency)))
            agent_rates.append(asyncio.run(through_agents(urls, rep, args.count, args.concurrency)))
            print(f"rep {rep + 1}: agents {agent_rates[-1]:.0f}/s, raw puts {raw_rates[-1]:.0f}/s")
    agents_rate, raw_rate = median(agent_rates), median(raw_rates)
    command = (
        f".venv/bin/python bench/etcd/registrations.py --count {args.count} "
        f"--concurrency {args.concurrency} --reps {args.reps}"
    )
    result = (
        f"**Durable registrations through agents vs raw puts** ({args.count} per run, "
        f"{args.concurrency} concurrent, {args.reps} runs, medians): two agents "
        f"**{agents_rate:.0f}/s**, raw `KV.Put` with the same client library **{raw_rate:.0f}/s**, "
        f"ratio **{agents_rate / raw_rate:.2f}** (target >= 0.5).  \n"
        f"Command: `{command}`  \nMachine: {machine()}"
    )
    print(result)
    write_result("registrations", result)


if __name__ == "__main__":
    main()
