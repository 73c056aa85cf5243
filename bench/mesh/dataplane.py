"""Data plane: the same backend reached directly, through two sidecars (mTLS, HTTP
filters), through HAProxy (one thread) and through the gateway, with wrk.

The backend is HAProxy answering 200 by itself (`http-request return`), so the
backend is never the bottleneck. Every Envoy runs with `--concurrency 1`, the
peer HAProxy with `nbthread 1`. All of it shares this machine's two cores with
wrk, which is itself one thread. Then: the time from an intention write to its
enforcement in the real Envoy, on a keep-alive connection.

Usage: .venv/bin/python bench/mesh/dataplane.py [--reps 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from _meshbench import EnvoyProcess, free_port, haproxy, header, line, median, mesh_agent, wrk

LOADS = {"light": 1, "moderate": 4, "heavy": 32}  # wrk connections


def register(
    api: httpx.Client, backend: int, sidecar: int, client_sidecar: int, upstream: int
) -> None:
    passing = [{"Name": "ready", "TTL": "1h", "Status": "passing"}]
    api.put(
        "/v1/agent/service/register",
        json={
            "Name": "bk",
            "Port": backend,
            "Check": {"TTL": "1h", "Status": "passing"},
            "Connect": {
                "SidecarService": {
                    "Port": sidecar,
                    "Checks": passing,
                    "Proxy": {"Config": {"protocol": "http"}},
                }
            },
        },
    ).raise_for_status()
    api.put(
        "/v1/agent/service/register",
        json={
            "Name": "ld",
            "Port": 1,
            "Connect": {
                "SidecarService": {
                    "Port": client_sidecar,
                    "Checks": passing,
                    "Proxy": {
                        "Upstreams": [
                            {
                                "DestinationName": "bk",
                                "LocalBindPort": upstream,
                                "Config": {"protocol": "http"},
                            }
                        ]
                    },
                }
            },
        },
    ).raise_for_status()


def wait_for(url: str, host: str = "") -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers={"Host": host} if host else {}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not reachable")


def enforcement(api: httpx.Client, url: str, reps: int) -> list[float]:
    """Seconds from `PUT .../exact` (deny) to the first 403 on a kept-alive connection."""
    times = []
    pair = {"source": "ld", "destination": "bk"}
    with httpx.Client(timeout=5) as client:
        for _ in range(reps):
            client.get(url)
            started = time.monotonic()
            api.put(
                "/v1/connect/intentions/exact", params=pair, json={"Action": "deny"}
            ).raise_for_status()
            while client.get(url).status_code != 403:
                time.sleep(0.001)
            times.append(time.monotonic() - started)
            api.delete("/v1/connect/intentions/exact", params=pair)
            while client.get(url).status_code != 200:
                time.sleep(0.005)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    header("mesh data plane: direct vs two sidecars vs HAProxy vs the gateway (wrk -t1)")
    backend, peer, sidecar, client_sidecar, upstream, gw = (free_port() for _ in range(6))
    backend_cfg = (
        f"frontend be\n  bind 127.0.0.1:{backend}\n"
        "  http-request return status 200 content-type text/plain string ok\n"
    )
    peer_cfg = (
        f"frontend fe\n  bind 127.0.0.1:{peer}\n  default_backend b\n"
        f"backend b\n  server s1 127.0.0.1:{backend}\n"
    )
    with haproxy(backend_cfg + peer_cfg), mesh_agent() as agent, agent.client() as api:
        register(api, backend, sidecar, client_sidecar, upstream)
        envoys = [EnvoyProcess.sidecar(agent, name) for name in ("bk", "ld")]
        envoys.append(EnvoyProcess.gateway(agent, gw))
        try:
            for envoy in envoys:
                envoy.wait_ready()
            paths = {
                "direct": (f"http://127.0.0.1:{backend}/", ""),
                "two sidecars (mTLS)": (f"http://127.0.0.1:{upstream}/", ""),
                "HAProxy, 1 thread": (f"http://127.0.0.1:{peer}/", ""),
                "gateway (Envoy)": (f"http://127.0.0.1:{gw}/", "bk"),
            }
            for url, host in paths.values():
                wait_for(url, host)
                wrk(url, 4, 1, host)  # warm-up
            results: dict[tuple[str, str], list[dict[str, float]]] = {}
            for rep in range(args.reps):
                for load, conns in LOADS.items():
                    for name, (url, host) in paths.items():
                        r = wrk(url, conns, args.seconds, host)
                        results.setdefault((name, load), []).append(r)
                        line(
                            f"rep {rep + 1} {load:8} {name:20} {r['rps']:8.0f} req/s  "
                            f"p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  "
                            f"errors {r['errors']:.0f}"
                        )
            report(results, args.reps)
            times = enforcement(api, f"http://127.0.0.1:{upstream}/", 5)
            line(
                f"intention write -> enforced in Envoy: median {median(times) * 1000:.1f} ms, "
                f"max {max(times) * 1000:.1f} ms over {len(times)}"
            )
        finally:
            for envoy in envoys:
                envoy.stop()


def report(results: dict[tuple[str, str], list[dict[str, float]]], reps: int) -> None:
    line(f"\nmedians over {reps} runs (spread: min-max of req/s); added = path p50 - direct p50")
    line("| load | path | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms |")
    line("|---|---|---|---|---|---|---|")
    for load in LOADS:
        direct = results[("direct", load)]
        d50 = statistics.median(r["p50"] for r in direct)
        d99 = statistics.median(r["p99"] for r in direct)
        for (name, at), runs in results.items():
            if at != load:
                continue
            rps = [r["rps"] for r in runs]
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            added = "" if name == "direct" else f"{p50 - d50:+.3f} | {p99 - d99:+.3f}"
            line(
                f"| {load} (-c{LOADS[load]}) | {name} | "
                f"{median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                f"{p50:.3f} | {p99:.3f} | {added or '- | -'} |"
            )


if __name__ == "__main__":
    main()
