"""Failover: three instances under steady load, one SIGKILLed; count failed requests.

A real agent (`waypost agent --dev`), three payment instances (uvicorn, HTTP
check every 1 s) and open-loop GETs through `AsyncServiceClient` with the
agent HTTP discovery. The run is repeated with retries off to show what the
retries (to a different instance, under the budget) and breakers buy.

    .venv/bin/python bench/client/failover.py --seconds 8 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter
from typing import Any

import httpx

import waypost
from waypost.cli.demo import _service, _start_agent, _wait_passing
from waypost.client import RetryPolicy


async def load(
    client: waypost.AsyncServiceClient, seconds: float, rate: float, kill_at: float, victim: Any
) -> tuple[Counter[str], float]:
    outcomes: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            response = await client.get("/api/payments")
            outcomes["ok" if response.status_code == 200 else f"http {response.status_code}"] += 1
        except (httpx.HTTPError, waypost.ClientError) as exc:
            outcomes[type(exc).__name__] += 1

    start = time.perf_counter()
    sent, killed_at = 0, 0.0
    while (now := time.perf_counter() - start) < seconds:
        if not killed_at and now >= kill_at:
            victim.send_signal(signal.SIGKILL)
            killed_at = now
        for _ in range(int(now * rate) - sent):
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    return outcomes, killed_at


async def gone_after(discovery: waypost.AsyncDiscovery, victim_id: str, since: float) -> float:
    async for found in discovery.watch("payment"):
        if victim_id not in {i.id for i in found}:
            return time.perf_counter() - since
    return float("nan")


async def scenario(agent: str, retries: bool, seconds: float, rate: float) -> dict[str, Any]:
    procs = [_service("payment", agent, f"payment-{retries}-{k}")[0] for k in range(3)]
    try:
        await _wait_passing(agent, "payment", 3)
        options: dict[str, Any] = {} if retries else {"retry": RetryPolicy(attempts=1)}
        async with (
            waypost.AsyncDiscovery(agent, wait=10) as discovery,
            waypost.AsyncServiceClient(
                "payment", discovery=discovery, balancer="round_robin", **options
            ) as client,
        ):
            await discovery.instances("payment")
            kill_at = seconds * 3 / 8
            watcher = asyncio.create_task(
                gone_after(discovery, f"payment-{retries}-0", time.perf_counter() + kill_at)
            )
            outcomes, _ = await load(client, seconds, rate, kill_at, procs[0])
            removal = await asyncio.wait_for(watcher, 30)
            stats = client.waypost_transport.statistics()["payment"]
        total = sum(outcomes.values())
        return {
            "retries": retries,
            "requests": total,
            "failed": total - outcomes["ok"],
            "outcomes": dict(outcomes),
            "removed_from_discovery_s": round(removal, 2),
            "retries_used": stats["retry_budget"]["retries"],
        }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    agent_proc, agent = _start_agent()
    try:
        for retries in (True, False):
            for _ in range(args.repeat):
                row = await scenario(agent, retries, args.seconds, args.rate)
                print(json.dumps(row), flush=True)
                httpx.put(f"{agent}/v1/agent/service/deregister/payment-{retries}-0")
    finally:
        agent_proc.terminate()
        agent_proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
