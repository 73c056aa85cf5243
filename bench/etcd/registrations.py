"""Durable registrations through agents vs raw etcd puts, same cluster, same run.

- agents: `PUT /v1/agent/service/register` spread over two `waypost agent`
  processes on the etcd cluster (aiohttp, CONCURRENCY keep-alive connections
  in total); each answer means: one etcd Txn committed by a quorum and applied
  to the agent's mirror through its watch.
- raw: `KV.Put` of the same body under unique keys, with the client library
  waypost itself uses (aetcd's stubs on grpc.aio), from one process, same
  concurrency, to the same first endpoint the agents use.

Also reported: the two agents' CPU time (user + system, from /proc) per
registration, which the shared machine's noise moves less than the rates.
`--against SRC` (repeatable) runs two more agents from another checkout's `src/` (for
instance the tree before a change) on a prefix of their own in the same run,
alternating the order rep by rep, and reports the same figures for them.

Target: agents / raw >= 0.5. Usage:
    .venv/bin/python bench/etcd/registrations.py [--count 3000] [--concurrency 64] [--reps 3]
        [--against ../other/src]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc.aio
from _common import agents, cluster, cpu_seconds, machine, median, write_result
from aetcd import rpc
from tests.agentproc import AgentProcess


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


class Pair:
    """Two agents of one tree, and what each rep measured through them."""

    def __init__(self, name: str, procs: list[AgentProcess]) -> None:
        self.name = name
        self.urls = [p.http_url for p in procs]
        self.pids = [p.proc.pid for p in procs if p.proc is not None]
        self.rates: list[float] = []
        self.cpu_us: list[float] = []  # agents' CPU per registration

    def run(self, rep: int, count: int, concurrency: int) -> None:
        started = cpu_seconds(self.pids)
        self.rates.append(asyncio.run(through_agents(self.urls, rep, count, concurrency)))
        self.cpu_us.append((cpu_seconds(self.pids) - started) / count * 1e6)

    def summary(self, raw_rates: list[float]) -> str:
        ratios = self.agent_ratio(raw_rates)
        return (
            f"{self.name}: two agents **{median(self.rates):.0f}/s** (runs "
            f"{' '.join(f'{r:.0f}' for r in self.rates)}), ratio to raw puts "
            f"**{median(ratios):.2f}** (per run "
            f"{' '.join(f'{r:.2f}' for r in ratios)}), agents' CPU per registration "
            f"**{median(self.cpu_us):.0f} µs** (runs {' '.join(f'{c:.0f}' for c in self.cpu_us)})"
        )

    def agent_ratio(self, raw_rates: list[float]) -> list[float]:
        return [a / r for a, r in zip(self.rates, raw_rates, strict=True)]


def paired(mine: Pair, other: Pair) -> str:
    """The agents' CPU per registration of two trees, as ratios rep by rep."""
    ratios = sorted(a / b for a, b in zip(mine.cpu_us, other.cpu_us, strict=True))
    return (
        f"agents' CPU per registration, paired by rep: median **{median(ratios):.2f}** "
        f"(reps {' '.join(f'{r:.2f}' for r in ratios)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--against", metavar="SRC", action="append", default=[], help="another checkout's src/"
    )
    args = parser.parse_args()
    raw_rates: list[float] = []
    with cluster() as etcd, contextlib.ExitStack() as stack:
        pairs = [Pair("this tree", stack.enter_context(agents(etcd, "node-a", "node-b")))]
        for other in args.against:
            others = stack.enter_context(agents(etcd, "node-a", "node-b", src=other))
            pairs.append(Pair(f"`{other}`", others))
        for rep in range(args.reps):
            endpoint = etcd.members[0].endpoint
            raw_rates.append(asyncio.run(raw_puts(endpoint, rep, args.count, args.concurrency)))
            for pair in pairs if rep % 2 == 0 else reversed(pairs):
                pair.run(rep, args.count, args.concurrency)
            done = ", ".join(f"{p.name} {p.rates[-1]:.0f}/s {p.cpu_us[-1]:.0f} µs" for p in pairs)
            print(f"rep {rep + 1}: raw puts {raw_rates[-1]:.0f}/s, {done}", flush=True)
    raw_rate = median(raw_rates)
    command = (
        f".venv/bin/python bench/etcd/registrations.py --count {args.count} "
        f"--concurrency {args.concurrency} --reps {args.reps}"
        + "".join(f" --against {other}" for other in args.against)
    )
    agents_rate = median(pairs[0].rates)
    result = (
        f"**Durable registrations through agents vs raw puts** ({args.count} per run, "
        f"{args.concurrency} concurrent, {args.reps} runs, medians): two agents "
        f"**{agents_rate:.0f}/s**, raw `KV.Put` with the same client library **{raw_rate:.0f}/s** "
        f"(runs {' '.join(f'{r:.0f}' for r in raw_rates)}), ratio "
        f"**{median(pairs[0].agent_ratio(raw_rates)):.2f}** (target >= 0.5).  \n"
        + "  \n".join(pair.summary(raw_rates) for pair in pairs)
        + "".join(f"  \n{pairs[0].name} / {p.name}, {paired(pairs[0], p)}" for p in pairs[1:])
        + f"  \nCommand: `{command}`  \nMachine: {machine()}"
    )
    print(result)
    write_result("registrations", result)


if __name__ == "__main__":
    main()
