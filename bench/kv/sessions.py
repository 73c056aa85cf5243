"""Session invalidation time after one of its checks goes critical.

A session holds a lock and names a TTL check of an instance on the agent's
node. Each round marks the check failing (`PUT /v1/agent/check/fail/<id>`)
and times, with blocking queries, until (a) the session is gone and (b) the
lock key shows no holder; then the check is passed again for the next round.
No peer in this run: etcd has no health checks to tie a lease to (Consul
itself is not packaged here).

Usage: .venv/bin/python bench/kv/sessions.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from _common import agent, header, line, median, percentile

CHECK = "service:locker"


def one_round(http: httpx.Client, n: int) -> tuple[float, float]:
    http.put(f"/v1/agent/check/pass/{CHECK}").raise_for_status()
    body = {"Checks": ["serfHealth", CHECK], "LockDelay": "0s", "Name": f"r{n}"}
    sid = http.put("/v1/session/create", json=body).json()["ID"]
    assert http.put(f"/v1/kv/lock?acquire={sid}", content=b"x").json() is True
    index = http.get("/v1/kv/lock").headers["X-Consul-Index"]
    started = time.perf_counter()
    http.put(f"/v1/agent/check/fail/{CHECK}").raise_for_status()
    gone = http.get(f"/v1/session/info/{sid}", params={"index": index, "wait": "10s"})
    while gone.json():
        gone = http.get(
            f"/v1/session/info/{sid}",
            params={"index": gone.headers["X-Consul-Index"], "wait": "10s"},
        )
    session_ms = (time.perf_counter() - started) * 1000
    (entry,) = http.get("/v1/kv/lock").json()
    assert "Session" not in entry, entry
    return session_ms, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    header(f"session invalidation after its check goes critical, {args.rounds} rounds")
    with agent("sqlite") as proc, httpx.Client(base_url=proc.http_url, timeout=30) as http:
        http.put(
            "/v1/agent/service/register",
            json={"Name": "locker", "ID": "locker", "Check": {"TTL": "1h"}},
        ).raise_for_status()
        rounds = [one_round(http, n) for n in range(args.rounds)]
    for name, values in (
        ("session gone", [r[0] for r in rounds]),
        ("lock free", [r[1] for r in rounds]),
    ):
        s = sorted(values)
        line(
            f"{name}: median {median(s):.2f} ms, p90 {percentile(s, 90):.2f} ms, "
            f"p99 {percentile(s, 99):.2f} ms, max {s[-1]:.2f} ms"
        )


if __name__ == "__main__":
    main()
