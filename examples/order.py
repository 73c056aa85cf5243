"""The order service: calls `payment` through discovery, balanced and resilient.

    python examples/order.py --agent http://127.0.0.1:8500
    python order.py --discovery 'k8s://?port=http'     # in a pod: EndpointSlices

Every second it places a few orders and prints which payment instance took
each one. Kill a payment instance (even with SIGKILL) and watch the traffic
move to the others without a failed order: the failed connection is retried
on another instance, the dead one's breaker opens, and the agent's health
check removes it from discovery moments later.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter

import httpx

import waypost


async def main(agent: str, per_second: int) -> None:
    async with (
        waypost.AsyncDiscovery(agent) as discovery,
        waypost.AsyncServiceClient(
            "payment", discovery=discovery, balancer="peak_ewma", timeout=2.0
        ) as payment,
    ):
        # Compose starts this container as soon as the payment containers
        # start, before any of them has registered and passed its check:
        # wait for a healthy one rather than report the first orders failed.
        async with contextlib.aclosing(discovery.watch("payment")) as lists:
            async for instances in lists:
                if instances:
                    break
        while True:
            paid_by: Counter[str] = Counter()
            for _ in range(per_second):
                try:
                    response = await payment.post("/api/payments", json={"amount": 100})
                    paid_by[response.json()["instance"]] += 1
                except (httpx.HTTPError, waypost.ClientError) as exc:
                    paid_by[f"FAILED ({type(exc).__name__})"] += 1
                await asyncio.sleep(1 / per_second)
            print("  ".join(f"{k}: {v}" for k, v in sorted(paid_by.items())), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--agent",
        "--discovery",
        default=os.environ.get("WAYPOST_AGENT", "http://127.0.0.1:8500"),
        help="any discovery URL: http://agent:8500, dns://..., k8s://?port=http",
    )
    parser.add_argument("--rate", type=int, default=10)
    args = parser.parse_args()
    # In a container this is PID 1, for which SIGTERM's default action does
    # nothing: without a handler, `docker-compose down` waited its 10 s, then killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main(args.agent, args.rate))
