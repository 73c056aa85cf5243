"""`waypost demo`: the order/payment scenario, runnable on one machine.

    run_demo()   starts an agent (unless given one), three payment instances and
                 an order service, each a real process; sends steady traffic
                 to the order service, which calls `payment` through discovery;
                 prints which instance served each second; SIGKILLs one payment
                 instance half-way; and shows traffic moving away with no
                 failed request.

The services themselves are cli/demo_apps.py, started as
`python -m waypost.cli.demo_apps`; the agent as `python -m waypost.cli.main agent`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

import httpx

SERVICES_MODULE = "waypost.cli.demo_apps"


def _spawn(
    args: list[str], pattern: str, timeout: float = 30.0
) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if match := re.search(pattern, line):
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"{' '.join(args)} did not start")


def _service(
    role: str, agent: str, name: str, balancer: str = "round_robin", service: str | None = None
) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", SERVICES_MODULE, role, "--agent", agent, "--name", name]
    cmd += ["--balancer", balancer, "--service", service or role]
    proc, port = _spawn(cmd, r"PORT (\d+)")
    return proc, int(port)


def _start_agent() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "waypost.cli.main", "agent", "--dev"]
    cmd += ["--http", "127.0.0.1:0", "--dns", "off", "--node", "demo"]
    return _spawn(cmd, r"HTTP API: (http://\S+)")


async def _wait_passing(agent: str, service: str, count: int, timeout: float = 20.0) -> None:
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await http.get(f"{agent}/v1/health/service/{service}", params={"passing": "1"})
            if r.status_code == 200 and len(r.json()) >= count:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{count} passing instance(s) of {service!r} never appeared")


async def _wait_order_ready(order_url: str, timeout: float = 20.0) -> None:
    """The order service answers once its own discovery has found payment:
    wait for one good order before the counted traffic starts."""
    async with httpx.AsyncClient(base_url=order_url, timeout=5.0) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (await http.get("/order")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the order service never completed an order")


async def _drive(
    order_url: str, seconds: float, rate: float, kill: Callable[[], str], out: TextIO
) -> tuple[int, int]:
    total = failed = 0
    killed = False
    async with httpx.AsyncClient(base_url=order_url, timeout=5.0) as http:
        for second in range(int(seconds)):
            counts: Counter[str] = Counter()
            if not killed and second >= seconds / 2:
                out.write(f"--- SIGKILL {kill()} ---\n")
                killed = True
            for _ in range(int(rate)):
                started = time.monotonic()
                try:
                    r = await http.get("/order")
                    ok = r.status_code == 200
                    counts[r.json().get("paid_by", "?") if ok else "FAILED"] += 1
                except httpx.HTTPError:
                    ok = False
                    counts["FAILED"] += 1
                total += 1
                failed += 0 if ok else 1
                await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
            spread = "  ".join(f"{k}: {v:3d}" for k, v in sorted(counts.items()))
            out.write(f"t={second + 1:2d}s  {spread}\n")
            out.flush()
    return total, failed


def run_demo(
    *,
    agent: str | None = None,
    instances: int = 3,
    seconds: float = 10.0,
    rate: float = 20.0,
    balancer: str = "round_robin",
    out: TextIO | None = None,
) -> int:
    """Run the order/payment scenario; returns 0 when no request failed.

    Args:
        agent: URL of a running agent; None starts a `--dev` agent.
        instances: Payment instances to start (one is killed).
        seconds: Length of the traffic phase.
        rate: Orders per second.
        balancer: Balancer the order service uses for `payment`.
        out: Where to print (default stdout).
    """
    out = out or sys.stdout
    procs: list[subprocess.Popen[str]] = []
    try:
        if agent is None:
            proc, agent = _start_agent()
            procs.append(proc)
            out.write(f"agent: {agent}\n")
        payments = {}
        for k in range(1, instances + 1):
            proc, port = _service("payment", agent, f"payment-{k}")
            payments[f"payment-{k}"] = proc
            procs.append(proc)
            out.write(f"payment-{k}: http://127.0.0.1:{port}\n")
        order, order_port = _service("order", agent, "order-1", balancer)
        procs.append(order)
        out.write(f"order-1: http://127.0.0.1:{order_port}\n")
        asyncio.run(_wait_passing(agent, "payment", instances))

        def kill() -> str:
            victim = sorted(payments)[-1]
            payments[victim].send_signal(signal.SIGKILL)
            return victim

        url = f"http://127.0.0.1:{order_port}"
        asyncio.run(_wait_order_ready(url))
        total, failed = asyncio.run(_drive(url, seconds, rate, kill, out))
        out.write(f"{total} orders, {failed} failed\n")
        return 0 if failed == 0 else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
