"""Run every client benchmark and write the "## Client library" section of
docs/benchmarks.md (other sections are left untouched).

    .venv/bin/python bench/client/run_all.py [--quick]

Each benchmark runs as its own process (so one cannot warm or starve the
next); medians of `--repeat` runs are reported.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from typing import Any

from _common import HERE, ROOT, machine

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Client library"


def run(script: str, *args: str) -> list[dict[str, Any]]:
    cmd = [sys.executable, str(HERE / script), *args]
    print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def ms(value: float) -> str:
    return f"{value:.1f}"


def lb_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| balancer | run | p50 ms | p95 ms | p99 ms | p99.9 ms | success % | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        run_name = "one slow" if r["slow"] else "no slow"
        lines.append(
            f"| {r['balancer']} | {run_name} | {ms(r['p50'])} | {ms(r['p95'])} | {ms(r['p99'])} "
            f"| {ms(r['p999'])} | {r['success']:.2f} | {r.get('load', float('nan')):.1f} |"
        )
    return lines


def lb_summary(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["balancer"], r["slow"]): r for r in rows}
    try:
        ewma, base, rr = by["peak_ewma", True], by["peak_ewma", False], by["round_robin", True]
    except KeyError:
        return []
    return [
        f"peak_ewma p99 with a slow backend / without: {ewma['p99'] / base['p99']:.2f}x "
        f"(target <= 1.25x); round_robin p99 / peak_ewma p99 with a slow backend: "
        f"{rr['p99'] / ewma['p99']:.1f}x (target >= 5x).",
    ]


def section(results: dict[str, Any], commands: list[str]) -> str:
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Last run: {results.get('run_at', '?')}.",
        "",
    ]
    lines += [
        "Reproduce with `.venv/bin/python bench/client/run_all.py` (each script also runs alone:",
        *[f"`{c}`" + ("," if k < len(commands) - 1 else ").") for k, c in enumerate(commands)],
        "",
        "### Beyond round robin (Linkerd 2016, latencies scaled 10x down)",
        "",
        "11 backends at ~16.7 ms (sd 0.5 ms), one at 200 ms for the middle half of the run "
        "(the original: 167 ms, 2 s, 60 s); latency measured to completion, success = 200 "
        "within 100 ms (the original's 1 s timeout); no retries, breakers or ejection, so only "
        "the balancer differs; peak_ewma's tau and default RTT scaled too (1 s, 3 ms). "
        "Medians of the runs.",
        "",
        *lb_table(results["lb"]),
        "",
        *lb_summary(results["lb"]),
        "",
        "`weighted` equals `random` here (all weights 1); `ring_hash`/`maglev` hash a random "
        "key per request, so they too spread blindly; `+hedge` sends a second copy after the "
        "recent p95 (hedges are charged to the retry budget). The machine was shared with "
        "other engineers' test and benchmark runs: each run waits (up to 30 s) for the CPUs "
        "to be mostly idle, and the load average at the end of each run is shown; a row with "
        "a high load is worth rerunning (`run_all.py --rerun-lb NAME`).",
        "",
        "### Adding more steps (Linkerd 2016, latencies scaled 10x down)",
        "",
        "10 backends adding 0, 1, 2, 4, 8, 16, 32, 64, 100 and 200 ms; the 100 ms one "
        "answers 503 40 % of the time, the 200 ms one 60 %; 200 req/s; success = final 200. "
        "Linkerd's figures scaled 10x: round robin p50 8.6 ms, p99 210 ms, 88 %; "
        "peak EWMA with failure accrual and retries p50 4.2 ms, p99 73 ms, 100 %.",
        "",
        "| client | p50 ms | p99 ms | success % |",
        "|---|---|---|---|",
        *[
            f"| {r['variant']} | {ms(r['p50'])} | {ms(r['p99'])} | {r['success']:.2f} |"
            for r in results.get("steps", [])
        ],
        "",
        "### Failover (3 instances, one SIGKILLed under steady load)",
        "",
        "| retries | requests | failed | removed from discovery after | retries used |",
        "|---|---|---|---|---|",
    ]
    for r in results["failover"]:
        lines.append(
            f"| {'on (default)' if r['retries'] else 'off'} | {r['requests']} | {r['failed']} "
            f"| {r['removed_from_discovery_s']} s | {r['retries_used']} |"
        )
    lines += [
        "",
        "### pick() cost with 100 instances (microseconds per call, median of 5)",
        "",
        "| balancer | pick | pick + report |",
        "|---|---|---|",
        *[f"| {r['target']} | {r['pick_us']} | {r['pick_report_us']} |" for r in results["pick"]],
        "",
        "### Throughput: AsyncServiceClient vs plain httpx.AsyncClient",
        "",
    ]
    t = results["throughput"][0]
    lines += [
        f"Same backend, closed loop: httpx {t['httpx_rps']:.0f} req/s, AsyncServiceClient "
        f"(peak_ewma, breakers, outlier, budget) {t['waypost_rps']:.0f} req/s: "
        f"**{t['ratio']:.2f}x** (target >= 0.9x). Runs: httpx {t['runs_httpx']}, "
        f"waypost {t['runs_waypost']}.",
        "",
    ]
    return "\n".join(lines)


def write(text: str) -> None:
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current)
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(updated)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", default="250")
    parser.add_argument("--only", default="", help="lb,steps,failover,pick,throughput")
    parser.add_argument("--render", action="store_true", help="rewrite the doc from results.json")
    parser.add_argument(
        "--rerun-lb", default="", help="rerun only these balancers, keep the rest of results.json"
    )
    args = parser.parse_args()
    repeat = "1" if args.quick else str(args.repeat)
    duration = "4" if args.quick else "8"
    lb_args = ["--duration", duration, "--rate", args.rate, "--repeat", repeat]
    fo_args = ["--seconds", "8", "--rate", "100"]
    st_args = ["--duration", duration, "--rate", "200", "--repeat", repeat]
    tp_args = ["--seconds", "3", "--concurrency", "16", "--rounds", "3" if args.quick else "5"]
    jobs = {
        "lb": lambda: run("beyond_round_robin.py", *lb_args),
        "steps": lambda: run("more_steps.py", *st_args),
        "failover": lambda: run("failover.py", *fo_args),
        "pick": lambda: run("pick_cost.py"),
        "throughput": lambda: run("throughput.py", *tp_args),
    }
    saved = HERE / "results.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    keys = [] if args.render else args.only.split(",") if args.only else list(jobs)
    for key in keys:
        results[key] = jobs[key]()
        results["run_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.rerun_lb:
        fresh = run("beyond_round_robin.py", *lb_args, "--balancers", args.rerun_lb)
        names = set(args.rerun_lb.split(","))
        kept = [r for r in results["lb"] if r["balancer"] not in names]
        order = [r["balancer"] for r in results["lb"]]
        results["lb"] = sorted(kept + fresh, key=lambda r: (order.index(r["balancer"]), r["slow"]))
        results["run_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commands = [
        "bench/client/beyond_round_robin.py " + " ".join(lb_args),
        "bench/client/more_steps.py " + " ".join(st_args),
        "bench/client/failover.py " + " ".join(fo_args),
        "bench/client/pick_cost.py",
        "bench/client/throughput.py " + " ".join(tp_args),
    ]
    saved.write_text(json.dumps(results, indent=1))
    write(section(results, commands))
    print(DOC)


if __name__ == "__main__":
    main()
