"""What the web UI costs the agent.

1. `GET /v1/internal/ui/services` with 1,000 services (one instance and one
   TTL check each), keep-alive, with wrk; the peer in the same run is Consul's
   own list, `GET /v1/catalog/services`, on the same agent. Both answers are
   cached while nothing changes, so this is the cost a page (or many) pays
   between changes.
2. The same summary built from scratch (what the first reader after every
   change pays), in process, against `/v1/catalog/services`' builder.
3. The timeline: memory per 10,000 transitions (tracemalloc), and the cost it
   adds to a status write (10,000 writes through `Catalog.write` on the
   in-memory store, with and without the timeline subscribed).
4. The mesh view, `/v1/internal/ui/intentions`, built in process (what the
   first reader after a change pays; then it is cached like any read): the
   whole matrix with 30 and 60 services (60 is the cap) and 40 intentions,
   and one service's callers and callees with 1,000 services; with the size
   of each answer.

Usage: .venv/bin/python bench/agent/ui.py [--reps 3] [--duration 10] [--connections 8]
       [--only-mesh]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import subprocess
import sys
import time
import tracemalloc

import httpx
import msgspec
from _common import agent, cpu_seconds, header, line, median

from waypost.api.internal_ui import UiEndpoints
from waypost.api.ui_intentions import Decisions, mesh_view
from waypost.catalog import Catalog, connect, writes
from waypost.catalog.definitions import CheckRegistration, ServiceRegistration
from waypost.catalog.timeline import Timeline
from waypost.storage import open_storage

SERVICES = 1000
TRANSITIONS = 10_000
OUTPUT = "HTTP GET http://10.0.0.7:8080/health: 503 Service Unavailable Output: upstream down"


def seed_agent(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        for i in range(SERVICES):
            body = {
                "Name": f"svc-{i:04d}",
                "ID": f"svc-{i:04d}-1",
                "Port": 8080,
                "Tags": ["v1", f"team-{i % 10}"],
                "Check": {"TTL": "10m", "Status": "passing"},
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
        assert len(http.get("/v1/internal/ui/services").json()) == SERVICES


def run_wrk(url: str, connections: int, duration: int) -> tuple[float, str]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 30)
    text = out.stdout
    if "Non-2xx" in text or "Socket errors" in text:
        line("wrk reported errors:\n" + text)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", text)
    return rate, p99.group(1) if p99 else "?"


def http_part(reps: int, duration: int, connections: int) -> None:
    line(f"## 1. cached reads, {SERVICES} services, wrk -t1 -c{connections} -d{duration}s")
    with agent("sqlite") as proc:
        seed_agent(proc.http_url)
        pid = proc.proc.pid  # type: ignore[union-attr]
        size = {}
        for path in ("/v1/internal/ui/services", "/v1/catalog/services"):
            size[path] = len(httpx.get(proc.http_url + path).content)
        rates: dict[str, list[float]] = {p: [] for p in size}
        run_wrk(proc.http_url + "/v1/internal/ui/services", connections, 2)  # warm-up
        for rep in range(reps):
            for path in size:  # alternate, so both see the same noise
                cpu0 = cpu_seconds(pid)
                rate, p99 = run_wrk(proc.http_url + path, connections, duration)
                cpu = (cpu_seconds(pid) - cpu0) / duration * 100
                rates[path].append(rate)
                line(f"rep {rep + 1} {path}: {rate:8.0f} req/s p99 {p99} agent CPU {cpu:.0f}%")
        for path, values in rates.items():
            spread = " ".join(f"{v:.0f}" for v in values)
            line(f"median {path}: {median(values):.0f} req/s ({spread}); {size[path]} bytes")


async def seeded_catalog(services: int) -> Catalog:
    catalog = Catalog(open_storage("memory://"))
    await catalog.open()
    for i in range(services):
        check = CheckRegistration(name="alive", ttl="10m", status="passing")
        reg = ServiceRegistration(name=f"svc-{i:04d}", id=f"svc-{i:04d}-1", check=check)
        await catalog.write(writes.register, "n1", reg, False, False)
    return catalog


def timed(fn, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def build_part(rounds: int = 30) -> None:
    line(f"## 2. building the answer from scratch, {SERVICES} services, median of {rounds}")
    catalog = await seeded_catalog(SERVICES)
    ui = UiEndpoints(None, catalog, None)  # type: ignore[arg-type]  # only the builder runs
    encoder = msgspec.json.Encoder()
    cold = timed(lambda: encoder.encode(UiEndpoints(None, catalog, None)._summaries()), rounds)  # type: ignore[arg-type]
    after_change = []
    for n in range(rounds):  # what the first reader after a change pays
        status = "critical" if n % 2 == 0 else "passing"
        await catalog.write(writes.set_status, "n1", "service:svc-0500-1", status, "")
        after_change += timed(lambda: encoder.encode(ui._summaries()), 1)
    peer = timed(lambda: encoder.encode(catalog.state.service_tags()), rounds)
    for name, values in (
        ("ui/services, nothing cached", cold),
        ("ui/services, after one service changed", after_change),
        ("catalog/services (peer; always whole)", peer),
    ):
        low, high = min(values), max(values)
        line(f"{name}: median {median(values):.2f} ms (min {low:.2f}, max {high:.2f})")
    await catalog.close()


async def flips(catalog: Catalog, count: int) -> float:
    """`count` status writes alternating critical/passing over the services; seconds taken."""
    started = time.perf_counter()
    for n in range(count):
        sid = f"svc-{n % 100:04d}-1"
        status = "critical" if (n // 100) % 2 == 0 else "passing"
        output = f"{OUTPUT} (write {n})"  # each its own string, as real outputs are
        await catalog.write(writes.set_status, "n1", f"service:{sid}", status, output)
    return time.perf_counter() - started


async def timeline_part(reps: int) -> None:
    line(f"## 3. the timeline, {TRANSITIONS} transitions over 100 instances")
    without, with_tl, per_event = [], [], []
    for _ in range(reps):
        catalog = await seeded_catalog(100)
        without.append(await flips(catalog, TRANSITIONS) / TRANSITIONS * 1e6)
        timeline = Timeline(catalog.state)
        catalog.subscribe_records(timeline.record)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        with_tl.append(await flips(catalog, TRANSITIONS) / TRANSITIONS * 1e6)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        events = timeline.statistics()["events"]
        assert events == TRANSITIONS, events
        per_event.append(grown / events)
        await catalog.close()
    line(f"write without the timeline: median {median(without):.1f} us ({_spread(without)})")
    line(f"write with the timeline (traced): median {median(with_tl):.1f} us ({_spread(with_tl)})")
    mib = median(per_event) * TRANSITIONS / 2**20
    line(
        f"memory: median {median(per_event):.0f} bytes per transition "
        f"({_spread(per_event)}), {mib:.2f} MiB per {TRANSITIONS}"
    )
    line(f"(outputs of {len(OUTPUT)} characters; tracemalloc slows the traced run)")
    untraced = []
    for _ in range(reps):
        catalog = await seeded_catalog(100)
        catalog.subscribe_records(Timeline(catalog.state).record)
        untraced.append(await flips(catalog, TRANSITIONS) / TRANSITIONS * 1e6)
        await catalog.close()
    m = median(untraced)
    line(f"write with the timeline (untraced): median {m:.1f} us ({_spread(untraced)})")


async def mesh_part(rounds: int = 30) -> None:
    line(f"## 4. the mesh view, built in process, median of {rounds}")
    encoder = msgspec.json.Encoder()
    for services, intentions, one in ((30, 40, False), (60, 40, False), (1000, 40, True)):
        catalog = await seeded_catalog(services)
        for k in range(intentions):  # exact pairs, and a few wildcards
            source = "*" if k % 10 == 0 else f"svc-{(k * 7) % services:04d}"
            body = connect.IntentionBody(action="deny" if k % 3 else "allow")
            destination = f"svc-{(k * 13 + 1) % services:04d}"
            await catalog.write(connect.put_intention, source, destination, body, "now")
        service = "svc-0001" if one else None
        size = len(encoder.encode(mesh_view(catalog.state, service)))
        state = catalog.state
        values = timed(lambda: encoder.encode(mesh_view(state, service)), rounds)  # noqa: B023
        what = f"{services} services, {'?service=svc-0001' if one else 'every pair'}"
        low, high = min(values), max(values)
        line(
            f"{what}: median {median(values):.2f} ms (min {low:.2f}, max {high:.2f}); {size} bytes"
        )
        # What the agent's view pays after the service list moved: it remembers
        # each pair's decision while the intentions stand still, so only new
        # pairs cost. An existing service's instance re-registered (a deploy),
        # and a new service (where that stays under the cap).
        decisions = Decisions(state)
        mesh_view(state, service, decisions)
        for label, name in (("an instance re-registered", "svc-0002"), ("a new service", "")):
            after: list[float] = []
            for n in range(rounds):
                fresh = name or f"new-{n:03d}"
                reg = ServiceRegistration(name=fresh, id=f"{fresh}-x")
                await catalog.write(writes.register, "n1", reg, False, False)
                build = lambda: encoder.encode(mesh_view(state, service, decisions))  # noqa: B023, E731
                after += timed(build, 1)
                empty = not mesh_view(state, service, decisions)["Cells"]
                await catalog.write(writes.deregister, "n1", f"{fresh}-x")
            if empty:
                line(f"{what}, after {label}: over the cap, no matrix")
                continue
            low, high = min(after), max(after)
            line(
                f"{what}, after {label}: median {median(after):.2f} ms"
                f" (min {low:.2f}, max {high:.2f})"
            )
        await catalog.close()


def _spread(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk repetition")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--only-mesh", action="store_true", help="part 4 alone (no wrk)")
    args = parser.parse_args()
    if args.only_mesh:
        header("the web UI's mesh view")
        asyncio.run(mesh_part())
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    header("the web UI's cost on the agent")
    http_part(args.reps, args.duration, args.connections)
    asyncio.run(build_part())
    asyncio.run(timeline_part(args.reps))
    asyncio.run(mesh_part())


if __name__ == "__main__":
    main()
