"""First full sync: Kubernetes -> registry, many Services at once.

A fake API server holds the Services and EndpointSlices; a real `waypost agent`
(sqlite store, the default) and a real `waypost k8s-sync` process start; the
figure is the time from the sync printing "running" to its first full sync
being done (every instance written to the agent, counted back through
`/v1/catalog/node/k8s-sync`), with the sync's and the agent's RSS after.

Shapes: 1,000 Services x 10 endpoints, and 100 Services x 100 endpoints (one
full slice of 100 each): 10,000 endpoints both ways.

Usage: .venv/bin/python bench/k8s/first_sync.py [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _k8s import FakeKubeApi, SyncProcess, agent_common, populate


def one_run(services: int, per_service: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="waypost-bench-k8s-") as tmp:
        api = FakeKubeApi(bookmark_interval=30).start(Path(tmp))
        try:
            total = populate(api, services, per_service)
            with agent_common.agent("sqlite") as agent:
                agent_rss_before = agent_common.rss_mb(agent.proc.pid)  # type: ignore[union-attr]
                sync = SyncProcess(api.kubeconfig(), agent.http_url, "--resync", "3600")
                sync.start()
                started = time.monotonic()
                try:
                    sync.wait_for("full sync:", timeout=600)
                    elapsed = time.monotonic() - started
                    with agent.client() as http:
                        held = len(http.get("/v1/catalog/node/k8s-sync").json()["Services"])
                    assert held == total, (held, total)
                    sync_rss = agent_common.rss_mb(sync.proc.pid)  # type: ignore[union-attr]
                    agent_rss = agent_common.rss_mb(agent.proc.pid)  # type: ignore[union-attr]
                finally:
                    sync.stop()
        finally:
            api.stop()
    return {
        "seconds": elapsed,
        "per_second": total / elapsed,
        "sync_rss": sync_rss,
        "agent_rss_before": agent_rss_before,
        "agent_rss": agent_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(agent_common.machine())
    for services, per_service in ((1000, 10), (100, 100)):
        runs = []
        for rep in range(args.reps):
            run = one_run(services, per_service)
            runs.append(run)
            print(
                f"{services}x{per_service} run {rep + 1}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in run.items()),
                flush=True,
            )
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        spread = f"{min(r['seconds'] for r in runs):.1f}-{max(r['seconds'] for r in runs):.1f}"
        rss = f"sync RSS {med['sync_rss']:.0f} MB, agent RSS {med['agent_rss_before']:.0f}"
        print(
            f"{services} Services x {per_service} endpoints: first full sync "
            f"{med['seconds']:.1f} s (runs {spread} s; {med['per_second']:.0f} instances/s), "
            f"{rss} -> {med['agent_rss']:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
