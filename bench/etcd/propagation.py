"""Cross-agent propagation: a registration acknowledged by agent A, seen by a
blocking query on agent B. Both agents share a real three-member etcd cluster.

Each sample: B has a blocking query parked on `/v1/health/service/prop` at the
current index; A is sent a registration of a new instance; the clock runs from
A's 200 to B's answer listing that instance. Target: p99 <= 50 ms.

Usage: .venv/bin/python bench/etcd/propagation.py [--samples 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from _common import agents, cluster, machine, median, percentile, write_result


async def sample(
    client: httpx.AsyncClient, a: str, b: str, index: int, i: int
) -> tuple[float, int]:
    """One registration on A; seconds from A's ack to B's wake-up, and B's new index."""
    query = client.get(f"{b}/v1/health/service/prop", params={"index": index, "wait": "30s"})
    parked = asyncio.ensure_future(query)
    await asyncio.sleep(0.005)  # let the query reach B before the write (else it returns at once)
    body = {"Name": "prop", "ID": f"prop-{i}", "Address": "10.0.0.1", "Port": 1000 + i}
    response = await client.put(f"{a}/v1/agent/service/register", json=body)
    acked = time.perf_counter()
    response.raise_for_status()
    woke = await parked
    seen = time.perf_counter()
    while f"prop-{i}" not in {row["Service"]["ID"] for row in woke.json()}:
        woke = await client.get(
            f"{b}/v1/health/service/prop",
            params={"index": woke.headers["X-Consul-Index"], "wait": "30s"},
        )
        seen = time.perf_counter()
    return max(0.0, seen - acked), int(woke.headers["X-Consul-Index"])


async def run(a: str, b: str, samples: int) -> list[float]:
    async with httpx.AsyncClient(timeout=60) as client:
        index = int((await client.get(f"{b}/v1/health/service/prop")).headers["X-Consul-Index"])
        latencies = []
        for i in range(samples):
            latency, index = await sample(client, a, b, index, i)
            latencies.append(latency * 1000)
        await asyncio.gather(
            *(client.put(f"{a}/v1/agent/service/deregister/prop-{i}") for i in range(samples))
        )
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    p50s, p99s = [], []
    with cluster() as etcd, agents(etcd, "node-a", "node-b") as (a, b):
        for rep in range(args.reps):
            latencies = asyncio.run(run(a.http_url, b.http_url, args.samples))
            p50s.append(percentile(latencies, 50))
            p99s.append(percentile(latencies, 99))
            print(f"rep {rep + 1}: p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms")
    command = (
        f".venv/bin/python bench/etcd/propagation.py --samples {args.samples} --reps {args.reps}"
    )
    result = (
        f"**Cross-agent propagation** (registration acknowledged by agent A -> blocking query on "
        f"agent B returns it; {args.samples} samples x {args.reps} runs, medians of the runs): "
        f"p50 **{median(p50s):.1f} ms**, p99 **{median(p99s):.1f} ms** (target p99 <= 50 ms).  \n"
        f"Command: `{command}`  \nMachine: {machine()}"
    )
    print(result)
    write_result("propagation", result)


if __name__ == "__main__":
    main()
