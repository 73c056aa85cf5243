"""Control plane: many ADS streams (a load generator speaking ADS over grpc), one
endpoint change, and how long until every stream has it.

100 client sidecars are registered, each with an upstream `tg`; 1,000 ADS
streams (10 per sidecar node ID, over 20 HTTP/2 connections) subscribe to
clusters and to `tg`'s endpoints and ACK what they get, as Envoy does. Then an
instance of `tg` is added or removed (`PUT /v1/agent/service/register` or
`/deregister`), and each stream's push latency is the time from just before
the write to the arrival of the endpoints that include (or lack) it.
Memory per stream is the agent's RSS growth while the streams open. The
agent's CPU time per change (user + system, from /proc, including grpcio's
threads) is reported beside the latency: the load generator shares the cores,
and other load on a shared machine moves wall-clock figures far more than it
moves this one.

Usage: .venv/bin/python bench/mesh/control_plane.py [--streams 1000] [--changes 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc
import httpx
from _meshbench import cpu_seconds, header, line, mesh_agent, rss_mb
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
CLIENTS = 100
CHANNELS = 20


def register(api: httpx.Client) -> None:
    passing = [{"Name": "ready", "TTL": "1h", "Status": "passing"}]
    add_target(api, 0)
    for i in range(CLIENTS):
        api.put(
            "/v1/agent/service/register",
            json={
                "Name": f"c{i}",
                "Port": 1,
                "Connect": {
                    "SidecarService": {
                        "Port": 20000 + i,
                        "Checks": passing,
                        "Proxy": {"Upstreams": [{"DestinationName": "tg", "LocalBindPort": 40000}]},
                    }
                },
            },
        ).raise_for_status()


def add_target(api: httpx.Client, n: int) -> None:
    api.put(
        "/v1/agent/service/register",
        json={
            "Name": "tg",
            "ID": f"tg{n}",
            "Port": 30000 + n,
            "Check": {"TTL": "1h", "Status": "passing"},
            "Connect": {
                "SidecarService": {
                    "Port": 31000 + n,
                    "Checks": [{"Name": "r", "TTL": "1h", "Status": "passing"}],
                }
            },
        },
    ).raise_for_status()


class Stream:
    def __init__(self, node_id: str) -> None:
        self.node = base_pb2.Node(id=node_id)
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.endpoints = -1
        self.changed = asyncio.Event()
        self.at = 0.0

    async def requests(self):  # type: ignore[no-untyped-def]
        while True:
            yield await self.queue.get()

    def send(self, type_url: str, names: list[str], version: str = "", nonce: str = "") -> None:
        self.queue.put_nowait(
            discovery_pb2.DiscoveryRequest(
                node=self.node,
                type_url=type_url,
                resource_names=names,
                version_info=version,
                response_nonce=nonce,
            )
        )

    async def run(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        call = stub.StreamAggregatedResources(self.requests())
        self.send(CLUSTER, [])
        async for response in call:
            names = ["upstream:tg"] if response.type_url == ENDPOINT else []
            self.send(response.type_url, names, response.version_info, response.nonce)
            if response.type_url == CLUSTER and self.endpoints < 0:
                self.endpoints = 0
                self.send(ENDPOINT, ["upstream:tg"])
            elif response.type_url == ENDPOINT:
                cla = endpoint_pb2.ClusterLoadAssignment.FromString(response.resources[0].value)
                self.endpoints = sum(len(g.lb_endpoints) for g in cla.endpoints)
                self.at = time.monotonic()
                self.changed.set()


async def wait_all(streams: list[Stream], count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(s.endpoints != count for s in streams):
        if time.monotonic() > deadline:
            missing = sum(s.endpoints != count for s in streams)
            raise RuntimeError(f"{missing} streams never saw {count} endpoints")
        await asyncio.sleep(0.01)


async def bench(address: str, api: httpx.Client, pid: int, n_streams: int, changes: int) -> None:
    before = rss_mb(pid)
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(c) for c in channels]
    streams = [Stream(f"c{i % CLIENTS}-sidecar-proxy") for i in range(n_streams)]
    opened = time.monotonic()
    tasks = [asyncio.create_task(s.run(stubs[i % CHANNELS])) for i, s in enumerate(streams)]
    await wait_all(streams, 1, timeout=120)
    line(f"{n_streams} streams subscribed in {time.monotonic() - opened:.1f} s")
    await asyncio.sleep(2)
    after = rss_mb(pid)
    line(
        f"agent RSS {before:.0f} MB -> {after:.0f} MB: "
        f"{(after - before) * 1024 / n_streams:.1f} KB per stream"
    )
    p99s, p50s, maxes, cpus = [], [], [], []
    for change in range(changes):
        adding = change % 2 == 0
        want = 2 if adding else 1
        for s in streams:
            s.changed.clear()
        started, cpu_before = time.monotonic(), cpu_seconds(pid)
        if adding:
            await asyncio.to_thread(add_target, api, 1)
        else:
            await asyncio.to_thread(
                lambda: api.put("/v1/agent/service/deregister/tg1").raise_for_status()
            )
        await wait_all(streams, want)
        cpus.append((cpu_seconds(pid) - cpu_before) * 1000)
        lat = sorted((s.at - started) * 1000 for s in streams)
        p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
        p50s.append(p50)
        p99s.append(p99)
        maxes.append(lat[-1])
        line(
            f"change {change + 1} ({'add' if adding else 'remove'}): push latency "
            f"p50 {p50:.0f} ms  p99 {p99:.0f} ms  max {lat[-1]:.0f} ms; agent CPU {cpus[-1]:.0f} ms"
        )
        await asyncio.sleep(0.5)
    line(
        f"median over {changes} changes: p50 {statistics.median(p50s):.0f} ms, "
        f"p99 {statistics.median(p99s):.0f} ms (spread {min(p99s):.0f}-{max(p99s):.0f}), "
        f"max {statistics.median(maxes):.0f} ms, agent CPU {statistics.median(cpus):.0f} ms "
        f"per change; goal p99 <= 200 ms"
    )
    for task in tasks:
        task.cancel()
    for c in channels:
        await c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=6)
    args = parser.parse_args()
    header(f"mesh control plane: {args.streams} ADS streams, one endpoint change at a time")
    with mesh_agent() as agent, agent.client() as api:
        register(api)
        assert agent.proc is not None
        asyncio.run(bench(agent.grpc_address, api, agent.proc.pid, args.streams, args.changes))


if __name__ == "__main__":
    main()
