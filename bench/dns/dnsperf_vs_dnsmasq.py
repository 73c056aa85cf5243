"""DNS throughput and latency: waypost's agent against dnsmasq, same records, same run.

Both servers hold a 10-instance service: 10 A records for
`bench.service.consul` and 10 SRV records for `_bench._tcp.service.consul`
whose targets (`<hexip>.addr.dc1.consul`) have A records, which both servers
put in the additional section. The agent runs as `waypost agent --dev`
(under uvloop, as the CLI does); dnsmasq is the Debian package serving the
same names from --host-record/--srv-host, with no upstream.

A third query set, NX, cycles through 20,000 distinct unknown names
(`r<n>.service.consul`, NXDOMAIN from both; dnsmasq is local for `consul`):
the worst case for waypost's answer cache, every query a miss.

For every query set the runs alternate between the two servers, `--reps`
times, and medians are reported:

- throughput: `dnsperf -c 10 -q 100 -l DURATION` (10 sockets, 100 queries in
  flight, as fast as the server answers), giving QPS, lost queries, and the
  server's CPU use (from /proc) during the run;
- latency: the same at a fixed offered load (`-Q`, below both servers'
  saturation) with `-v`, whose per-query lines give p50 and p99.

On a machine with 2 or more CPUs each server is pinned to CPU 0 and dnsperf
to CPU 1, so that the load generator does not steal the server's core.
Loopback only (127.0.0.1). Needs dnsperf and dnsmasq (Debian packages).

Usage: .venv/bin/python bench/dns/dnsperf_vs_dnsmasq.py [--reps 3] [--duration 8]
       [--rate 20000]

The table it prints is the one in the "## DNS" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.agentproc import AgentProcess  # noqa: E402

N = 10
QUERIES = {
    "A": ["bench.service.consul A"],
    "SRV": ["_bench._tcp.service.consul SRV"],
    # worst case for a cache: 20,000 distinct unknown names in a loop (NXDOMAIN)
    "NX": [f"r{n}.service.consul A" for n in range(20_000)],
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def addresses() -> list[tuple[str, int, str]]:
    """(address, port, SRV target) of the 10 instances."""
    rows = []
    for i in range(1, N + 1):
        address = f"10.1.0.{i}"
        hexip = socket.inet_aton(address).hex()
        rows.append((address, 8000 + i, f"{hexip}.addr.dc1.consul"))
    return rows


def _pin(cpu: int) -> Callable[[], None] | None:
    if (os.cpu_count() or 1) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def waypost() -> Iterator[tuple[str, int, int]]:
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "bench",
        "--log-level", "warning",
    ).start()  # fmt: skip
    assert proc.proc is not None
    try:
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(proc.proc.pid, {0})
        with httpx.Client(base_url=proc.http_url, timeout=30) as http:
            for address, port, _ in addresses():
                body = {"Name": "bench", "ID": f"bench-{port}", "Address": address, "Port": port}
                http.put("/v1/agent/service/register", json=body).raise_for_status()
        yield proc.dns_host, proc.dns_port, proc.proc.pid
    finally:
        proc.stop()


@contextlib.contextmanager
def dnsmasq() -> Iterator[tuple[str, int, int]]:
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    port = _free_udp_port()
    args = [binary, "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
            "--listen-address=127.0.0.1", f"--port={port}", "--cache-size=1000",
            "--log-facility=/dev/null", "--local=/consul/"]  # fmt: skip
    for address, srv_port, target in addresses():
        args.append(f"--host-record=bench.service.consul,{address}")
        args.append(f"--host-record={target},{address}")
        args.append(f"--srv-host=_bench._tcp.service.consul,{target},{srv_port},1,1")
    proc = subprocess.Popen(args, preexec_fn=_pin(0), stderr=subprocess.PIPE, text=True)
    try:
        _wait_udp("127.0.0.1", port)
        yield "127.0.0.1", port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_udp(host: str, port: int) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + 10
    while True:
        try:
            dns.query.udp(dns.message.make_query("bench.service.consul", "A"), host, 0.2, port)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def dnsperf(host: str, port: int, qfile: str, duration: float, extra: list[str]) -> str:
    cmd = ["dnsperf", "-s", host, "-p", str(port), "-d", qfile, "-l", str(duration),
           "-c", "10", "-q", "100", *extra]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, preexec_fn=_pin(1)
    ).stdout


def throughput(host: str, port: int, pid: int, qfile: str, duration: float) -> dict[str, float]:
    before, start = cpu_seconds(pid), time.monotonic()
    out = dnsperf(host, port, qfile, duration, [])
    cpu = (cpu_seconds(pid) - before) / (time.monotonic() - start)
    qps = float(_field(out, r"Queries per second:\s+([\d.]+)"))
    return {
        "qps": qps,
        "cpu_us": 1e6 * cpu / qps,
        "lost": float(_field(out, r"Queries lost:\s+(\d+)")),
        "avg_ms": 1000 * float(_field(out, r"Average Latency \(s\):\s+([\d.]+)")),
        "cpu": cpu,
    }


def latency(host: str, port: int, qfile: str, duration: float, rate: int) -> dict[str, float]:
    out = dnsperf(host, port, qfile, duration, ["-Q", str(rate), "-v"])
    times = sorted(
        float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith(">")
    )
    if not times:
        raise RuntimeError("dnsperf -v printed no per-query lines:\n" + out)

    def pct(p: float) -> float:
        return 1000 * times[min(len(times) - 1, int(p * len(times)))]

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999)}


def _field(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"dnsperf output lacks {pattern!r}:\n{text}")
    return match.group(1)


def run(reps: int, duration: float, rate: int) -> dict[tuple[str, str], dict[str, float]]:
    servers = {"waypost": waypost, "dnsmasq": dnsmasq}
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for qtype, lines in QUERIES.items():
            files[qtype] = str(Path(tmp) / f"{qtype}.txt")
            Path(files[qtype]).write_text("\n".join(lines) + "\n")
        with waypost() as wp, dnsmasq() as dm:
            started = {"waypost": wp, "dnsmasq": dm}
            for rep in range(reps):
                for qtype, qfile in files.items():
                    for name in servers:
                        host, port, pid = started[name]
                        figures = throughput(host, port, pid, qfile, duration)
                        figures |= latency(host, port, qfile, duration / 2, rate)
                        samples.setdefault((name, qtype), []).append(figures)
                        print(f"rep {rep + 1} {qtype:3} {name:8} {_fmt(figures)}", flush=True)
    return {k: {f: statistics.median(s[f] for s in v) for f in v[0]} for k, v in samples.items()}


def _fmt(figures: dict[str, float]) -> str:
    return "  ".join(
        f"{k}={v:,.0f}" if k in ("qps", "lost") else f"{k}={v:,.3f}" for k, v in figures.items()
    )


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    perf = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True)
    version = re.search(r"Version ([\d.]+)", perf.stdout + perf.stderr)
    dm = subprocess.run(
        [shutil.which("dnsmasq") or "dnsmasq", "--version"], capture_output=True, text=True
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()} with uvloop, "
        f"dnsperf {version.group(1) if version else '?'}, "
        f"{dm.stdout.splitlines()[0] if dm.stdout else 'dnsmasq'}"
    )


def table(results: dict[tuple[str, str], dict[str, float]], rate: int) -> str:
    rows = [
        "| query | server | QPS | ratio | server CPU | CPU µs/query | one-core capacity | ratio "
        f"| avg latency at max (ms) | p50 at {rate // 1000}k qps (ms) "
        f"| p99 at {rate // 1000}k qps (ms) | p99.9 (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for qtype in QUERIES:
        base = results[("dnsmasq", qtype)]
        for name in ("waypost", "dnsmasq"):
            r = results[(name, qtype)]
            capacity = 1e6 / r["cpu_us"]
            rows.append(
                f"| {qtype} | {name} | {r['qps']:,.0f} | {r['qps'] / base['qps']:.2f} "
                f"| {r['cpu']:.0%} | {r['cpu_us']:.1f} | {capacity:,.0f} "
                f"| {base['cpu_us'] / r['cpu_us']:.2f} "
                f"| {r['avg_ms']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
                f"| {r['p999_ms']:.3f} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=20000, help="offered load of the latency runs")
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            sys.exit(f"{tool} is not installed (Debian packages: dnsperf, dnsmasq-base)")
    results = run(args.reps, args.duration, args.rate)
    print()
    print(machine())
    print(table(results, args.rate))


if __name__ == "__main__":
    main()
