"""10,000 HTTP checks at a 10 s interval (1,000 checks/s): the agent's CPU.

The agent (sqlite store) gets 10,000 service registrations, each with an HTTP
check on a real local server: a tiny asyncio responder in another process
(this script with --serve) that answers `200 ok` and closes, as a health
endpoint does. After a warm-up (the random first-run stagger spreads the checks
over the interval), the agent's CPU (utime + stime from /proc/<pid>/stat) is
measured over WINDOW seconds, REPS times, with the checks run in each window.

Usage: .venv/bin/python bench/agent/checks.py [--reps 3] [--window 60] [--checks 10000]
       [--interval 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import httpx
from _common import (
    agent,
    cpu_seconds,
    header,
    host_busy,
    line,
    median,
    raise_nofile,
    rss_mb,
)

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\nok"
)


class _Responder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:  # a health check request has no body
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]
            self.transport.close()


def serve() -> None:
    """The health endpoint process: print the port, serve until stdin closes."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Responder, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # parent gone or done: stop
        server.close()

    asyncio.run(main())


async def register(base: str, count: int, port: int, interval: int) -> None:
    url = f"{base}/v1/agent/service/register"
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        todo = iter(range(count))

        async def worker() -> None:
            for i in todo:
                body = {
                    "Name": f"svc-{i % 500}",
                    "ID": f"svc-{i}",
                    "Address": "127.0.0.1",
                    "Port": port,
                    "Check": {
                        "HTTP": f"http://127.0.0.1:{port}/health",
                        "Interval": f"{interval}s",
                        "Timeout": "5s",
                    },
                }
                async with session.put(url, data=json.dumps(body)) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"register failed: {resp.status} {await resp.text()}")

        await asyncio.gather(*(worker() for _ in range(64)))


def check_stats(http: httpx.Client) -> tuple[float, float]:
    stats = http.get("/v1/agent/self").json()["Stats"]["health"]
    return float(stats["check_runs"]), float(stats["running_checks"])


def passing_count(http: httpx.Client) -> int:
    return len(http.get("/v1/health/state/passing").json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=int, default=60, help="seconds per measurement")
    parser.add_argument("--checks", type=int, default=10_000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    raise_nofile(65536)
    header(
        f"{args.checks} HTTP checks every {args.interval} s ({args.checks / args.interval:.0f}/s)"
    )
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with agent("sqlite") as proc, httpx.Client(base_url=proc.http_url, timeout=60) as http:
            pid = proc.proc.pid  # type: ignore[union-attr]
            t = time.monotonic()
            asyncio.run(register(proc.http_url, args.checks, port, args.interval))
            line(
                f"registered {args.checks} services with HTTP checks "
                f"in {time.monotonic() - t:.1f} s"
            )
            warm = 2 * args.interval
            time.sleep(warm)
            line(
                f"after {warm} s warm-up: {passing_count(http)} passing checks, "
                f"agent RSS {rss_mb(pid):.0f} MB"
            )
            cpus = []
            for rep in range(args.reps):
                runs0, _ = check_stats(http)
                cpu0, srv0, host0 = cpu_seconds(pid), cpu_seconds(server.pid), host_busy()
                t0 = time.monotonic()
                time.sleep(args.window)
                elapsed = time.monotonic() - t0
                cpu = (cpu_seconds(pid) - cpu0) / elapsed * 100
                srv = (cpu_seconds(server.pid) - srv0) / elapsed * 100
                host1 = host_busy()
                host = (host1[0] - host0[0]) / max(1, host1[1] - host0[1]) * 100
                runs1, running = check_stats(http)
                cpus.append(cpu)
                line(
                    f"rep {rep + 1}: agent CPU {cpu:.1f}% of one core, "
                    f"{(runs1 - runs0) / elapsed:.0f} checks/s ({running:.0f} running), "
                    f"health server CPU {srv:.0f}%, whole machine busy {host:.0f}% of {2} cores"
                )
            line(f"agent RSS at the end {rss_mb(pid):.0f} MB, {passing_count(http)} passing checks")
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    m = median(cpus)
    line(f"median agent CPU: {m:.1f}% of one core (target <= 50%: {'PASS' if m <= 50 else 'MISS'})")


if __name__ == "__main__":
    main()
