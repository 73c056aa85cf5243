"""Cost of one `pick()` (and `pick()` + `report()`) with 100 instances.

Pure CPU, no I/O: every balancer alone, and the full `Router` (balancer +
breakers + outlier detector) that the transports use.

    .venv/bin/python bench/client/pick_cost.py
"""

from __future__ import annotations

import json
import random
import statistics
import time

from waypost.client import Instance, Router, make_balancer
from waypost.client._balancers import BALANCERS

N = 20_000


def instances(n: int = 100) -> list[Instance]:
    return [Instance(f"i{k}", f"10.0.{k // 250}.{k % 250}", 8080) for k in range(n)]


def per_call(fn: object, reps: int = 5) -> float:
    runs = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        runs.append((time.perf_counter() - started) / N * 1e6)
    return statistics.median(runs)


def bench(target: object) -> dict[str, float]:
    pick, report = target.pick, target.report  # type: ignore[attr-defined]

    def picks_only() -> None:
        for _ in range(N):
            pick()

    def pick_report() -> None:
        for k in range(N):
            report(pick(), True, 0.001 * (k % 7))

    only = per_call(picks_only)
    both = per_call(pick_report)
    return {"pick_us": round(only, 2), "pick_report_us": round(both, 2)}


def main() -> None:
    for name in sorted(BALANCERS):
        extra = {"table_size": 65537} if name == "maglev" else {}
        balancer = make_balancer(name, rng=random.Random(1), **extra)
        balancer.update(instances())
        print(json.dumps({"target": name, **bench(balancer)}))
    router = Router("svc", "peak_ewma", instances(), rng=random.Random(1))
    print(json.dumps({"target": "Router(peak_ewma)+breakers+outlier", **bench(router)}))


if __name__ == "__main__":
    main()
