"""`?filter=` and `?node-meta=` on `GET /v1/health/service/<name>?passing`: req/s against
the unfiltered read, in the same run, with wrk, and the cost of the filter itself.

The same ten instances as health_read.py (passing TTL checks, sqlite store);
five carry `Meta.version = "2"`. Three URLs, measured in turn each repetition
(order rotated), keep-alive, wrk on the same two cores:

    plain     ?passing
    filter    ?passing&filter=Service.Meta.version == "2" and "v1" in Service.Tags
    nodemeta  ?passing&node-meta=rack:r1

A read's encoded answer is cached while the service's index stands still, so
these are the steady-state figures; after every change the next read builds
the answer again. That cold cost (encode the ten rows, or encode and test them)
is timed in-process, on the agent's own code, as the second table.

Usage: .venv/bin/python bench/agent/filtered_read.py [--reps 3] [--duration 8]
       [--connections 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import timeit
from urllib.parse import quote

import httpx
from _common import agent, cpu_seconds, header, line, median
from health_read import run_wrk

SERVICE = "web"
EXPRESSION = 'Service.Meta.version == "2" and "v1" in Service.Tags'
# The same question with go-bexpr's newer forms: a collection expression and a JSON Pointer.
COLLECTION = 'any Service.Tags as t { t == "v1" } and "/Service/Meta/version" == "2"'


def setup(base: str) -> dict[str, str]:
    with httpx.Client(base_url=base, timeout=30) as http:
        http.put("/v1/agent/service/register", json={"Name": "warm", "Port": 1}).raise_for_status()
        for i in range(10):
            body = {
                "Name": SERVICE,
                "ID": f"{SERVICE}-{i}",
                "Address": f"10.0.0.{i + 1}",
                "Port": 8080,
                "Tags": ["v1"],
                "Meta": {"version": str(1 + i % 2)},
                "Check": {"CheckID": f"{SERVICE}-{i}-ttl", "TTL": "10m", "Status": "passing"},
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
        urls = {
            "plain": f"{base}/v1/health/service/{SERVICE}?passing",
            "filter": f"{base}/v1/health/service/{SERVICE}?passing&filter={quote(EXPRESSION)}",
            "nodemeta": f"{base}/v1/health/service/{SERVICE}?passing&node-meta=rack:r1",
        }
        sizes = {k: len(http.get(u).json()) for k, u in urls.items()}
        assert sizes == {"plain": 10, "filter": 5, "nodemeta": 0}, sizes
        return urls


def cold_costs() -> dict[str, float]:
    """Microseconds to build the answer from the state: encode only, or encode and filter."""
    from waypost.api import encode, filter_fields
    from waypost.api.filter import _compiled as compiled_cache
    from waypost.api.filter import compile_filter
    from waypost.catalog import Check, Node, Service

    node = Node(name="n1", address="127.0.0.1", meta={"rack": "r2"})
    serf = Check(node="n1", check_id="serfHealth", name="Serf", status="passing")
    rows = []
    for i in range(10):
        service = Service(
            node="n1",
            id=f"web-{i}",
            name="web",
            tags=("v1",),
            port=8080,
            meta={"version": str(1 + i % 2)},
        )
        check = Check(
            node="n1", check_id=f"web-{i}-ttl", name="ttl", status="passing", service_id=f"web-{i}"
        )
        rows.append((node, service, [serf, check]))
    keep = compile_filter(EXPRESSION, filter_fields.HEALTH_ROW)
    keep_any = compile_filter(COLLECTION, filter_fields.HEALTH_ROW)

    def plain() -> object:
        return [encode.health_row(*row) for row in rows]

    def filtered() -> object:
        return [e for row in rows if keep(e := encode.health_row(*row))]

    def collection() -> object:
        return [e for row in rows if keep_any(e := encode.health_row(*row))]

    def compiled() -> object:
        compiled_cache.clear()  # time the parse, not the cache
        return compile_filter(EXPRESSION, filter_fields.HEALTH_ROW)

    n = 2000
    return {
        name: min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        for name, fn in (
            ("encode 10 rows", plain),
            ("encode + filter 10 rows", filtered),
            ("encode + filter 10 rows, any/all and a JSON Pointer", collection),
            ("compile the expression", compiled),
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per URL per repetition")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    wrk = f"wrk -t{args.threads} -c{args.connections}"
    header(f"GET /v1/health/service/{SERVICE}?passing, filtered or not, {wrk}")
    rates: dict[str, list[float]] = {"plain": [], "filter": [], "nodemeta": []}
    # Agent CPU per request: steadier than req/s when others load the machine.
    costs: dict[str, list[float]] = {"plain": [], "filter": [], "nodemeta": []}
    with agent("sqlite") as proc:
        urls = setup(proc.http_url)
        for url in urls.values():
            run_wrk(url, args.threads, args.connections, 2)  # warm-up
        for rep in range(args.reps):
            order = list(urls)[rep % 3 :] + list(urls)[: rep % 3]
            for name in order:
                cpu0 = cpu_seconds(proc.proc.pid)  # type: ignore[union-attr]
                rate, p99 = run_wrk(urls[name], args.threads, args.connections, args.duration)
                cpu = (cpu_seconds(proc.proc.pid) - cpu0) / args.duration * 100  # type: ignore[union-attr]
                rates[name].append(rate)
                costs[name].append(cpu / 100 / rate * 1e6)
                line(
                    f"rep {rep + 1} {name:8s}: {rate:8.0f} req/s  p99 {p99}  agent CPU {cpu:.0f}%"
                    f"  {costs[name][-1]:.0f} us CPU/request"
                )
    base = median(rates["plain"])
    for name, values in rates.items():
        spread = " ".join(f"{v:.0f}" for v in values)
        ratio = median(values) / base
        line(f"median {name:8s}: {median(values):8.0f} req/s ({ratio:.2f}x plain; reps {spread})")
    for name, values in costs.items():
        spread = " ".join(f"{v:.0f}" for v in values)
        line(f"median {name:8s}: {median(values):5.1f} us agent CPU per request (reps {spread})")
    for name, micros in cold_costs().items():
        line(f"cold: {name}: {micros:.1f} us")


if __name__ == "__main__":
    main()
