"""A readiness change: from the fake API server's watch event to where callers see it.

One Service, 10 endpoints; endpoint 1 flips between ready and unready, one flip
at a time, `--flips` times. For each flip, from the moment the fake API server
is told (`put()`, which sends the watch event) until:

- HTTP: a blocking query `GET /v1/health/service/payment?passing` on the agent
  (fed by a real `waypost k8s-sync` process) returns the new set;
- DNS: the agent's `payment.service.consul` A answer has the new set, on odd
  flips, asked every 0.5 ms from the flip on by a poller in a process of its
  own (`_dnspoll.py`; on a thread here it waited for this process's GIL, up
  to the 5 ms switch interval, whenever the loop held it); the polling adds
  up to 0.5 ms;
- client: the `k8s://` source in this process yields the new list and the
  Router holds it (what the balancer picks from next), on even flips (the
  poller's queries take a CPU and the agent's loop while they run).

The fake API server runs in a process of its own (`_fakeproc.py`), as a real
API server does: on a thread of this process it shared the GIL with the client
it served and inflated the client's figure. Its `put()` time is read on the
machine's monotonic clock, which every process shares.

Goals: HTTP and DNS p99 <= 100 ms, client p99 <= 10 ms. No peer runs here:
consul-k8s (the only other catalog sync) polls every 30 s by design.

`--store memory` runs the agent on its in-memory store (`--dev`): no fsync in
the path, which separates the disk's share of the figures from the code's.

Usage: .venv/bin/python bench/k8s/readiness.py [--flips 400] [--reps 3] [--store memory]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from _dnspoll import DnsPoller
from _fakeproc import FakeApiProcess
from _k8s import SyncProcess, agent_common, endpoint_slice, ep, service

import waypost
from waypost.client import Router

DEFAULT_LEASE = ["--lease-duration", "15", "--renew-deadline", "10", "--retry-period", "2"]
ADDRESSES = [f"127.0.30.{n}" for n in range(1, 11)]


def slice_with(ready_first: bool) -> dict[str, object]:
    eps = [ep(a, ready=(ready_first if n == 0 else True)) for n, a in enumerate(ADDRESSES)]
    return endpoint_slice("payment-a", "payment", eps)


class Observers:
    """The latest set each observer holds, and when it changed."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[frozenset[str], float]] = {}
        self.changed = asyncio.Event()

    def saw(self, who: str, addresses: frozenset[str]) -> None:
        if self.seen.get(who, (None, 0.0))[0] != addresses:
            self.seen[who] = (addresses, time.perf_counter())
            self.changed.set()


async def http_watch(agent_url: str, obs: Observers) -> None:
    index = 0
    async with httpx.AsyncClient(base_url=agent_url, timeout=30) as http:
        while True:
            params = {"passing": "1", **({"index": str(index), "wait": "10s"} if index else {})}
            response = await http.get("/v1/health/service/payment", params=params)
            index = int(response.headers["X-Consul-Index"])
            obs.saw("http", frozenset(r["Service"]["Address"] for r in response.json()))


async def client_watch(url: str, obs: Observers) -> None:
    router = Router("payment", "round_robin")
    async with waypost.AsyncDiscovery(url, share=False, min_interval=0) as discovery:
        async for instances in discovery.watch("payment"):
            router.update(instances)
            obs.saw("client", frozenset(i.address for i in router.instances))


async def run(flips: int, tmp: Path, store: str) -> dict[str, list[float]]:
    api = FakeApiProcess(tmp, bookmark_interval=30).start()
    api.put(service("payment"))
    api.put(slice_with(True))
    results: dict[str, list[float]] = {"http": [], "dns": [], "client": []}
    try:
        with agent_common.agent(store, "--dns", "127.0.0.1:0") as agent:
            poller = DnsPoller(agent.dns_host, agent.dns_port, "payment.service.consul")
            # the default lease timings (the tests' fast ones renew 4 times a second)
            sync = SyncProcess(api.kubeconfig, agent.http_url, *DEFAULT_LEASE).start()
            try:
                sync.wait_for("full sync:")
                obs = Observers()
                tasks = [
                    asyncio.create_task(http_watch(agent.http_url, obs)),
                    asyncio.create_task(client_watch(f"k8s://?kubeconfig={api.kubeconfig}", obs)),
                ]
                everyone = frozenset(ADDRESSES)
                while any(obs.seen.get(w, (None,))[0] != everyone for w in ("http", "client")):
                    await asyncio.wait_for(obs.changed.wait(), 10)
                    obs.changed.clear()
                for flip in range(flips):
                    ready = flip % 2 == 1
                    want = everyone if ready else everyone - {ADDRESSES[0]}
                    await asyncio.sleep(0.05)
                    # on a thread: the loop must read the client's watch event meanwhile
                    started = await asyncio.to_thread(api.put, slice_with(ready))
                    dns_done = None
                    if flip % 2:  # DNS polled on odd flips, the client timed on even
                        dns_done = await asyncio.to_thread(poller.wait, want, started + 2.0)
                    deadline = started + 2.0
                    while any(obs.seen[w][0] != want for w in ("http", "client")):
                        left = deadline - time.perf_counter()
                        if left <= 0:
                            raise RuntimeError(
                                f"flip {flip}: not seen everywhere in 2 s: {obs.seen}"
                            )
                        obs.changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(obs.changed.wait(), left)
                    results["http"].append((obs.seen["http"][1] - started) * 1000)
                    if flip % 2 == 0:
                        results["client"].append((obs.seen["client"][1] - started) * 1000)
                        continue
                    if dns_done is None:
                        raise RuntimeError(f"flip {flip}: DNS did not change within 2 s")
                    results["dns"].append((dns_done - started) * 1000)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                sync.stop()
                poller.stop()
    finally:
        api.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flips", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--store", choices=("sqlite", "memory"), default="sqlite", help="the agent's store"
    )
    args = parser.parse_args()
    print(agent_common.machine(), f"agent store: {args.store}")
    per_rep: dict[str, list[tuple[float, float]]] = {"http": [], "dns": [], "client": []}
    for rep in range(args.reps):
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="waypost-bench-k8s-") as tmp:
            results = asyncio.run(run(args.flips, Path(tmp), args.store))
        print(f"run {rep + 1}: load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
        for who, values in results.items():
            values.sort()
            p50, p99 = agent_common.percentile(values, 50), agent_common.percentile(values, 99)
            per_rep[who].append((p50, p99))
            print(
                f"run {rep + 1} {who}: p50 {p50:.2f} ms, p99 {p99:.2f} ms (max {values[-1]:.2f})",
                flush=True,
            )
    for who, reps in per_rep.items():
        p50 = statistics.median(r[0] for r in reps)
        p99 = statistics.median(r[1] for r in reps)
        spread = ", ".join(f"{r[1]:.1f}" for r in reps)
        print(f"{who}: p50 {p50:.2f} ms, p99 {p99:.2f} ms (p99 of each run: {spread})", flush=True)


if __name__ == "__main__":
    main()
