"""`waypost demo`: the order/payment scenario, runnable on one machine.

    run_demo()   starts an agent (unless given one), three payment instances and
                 an order service, each a real process; sends steady traffic
                 to the order service, which calls `payment` through discovery;
                 prints which instance served each second; SIGKILLs one payment
                 instance half-way; and shows traffic moving away with no
                 failed request.

The services themselves are cli/demo_apps.py, started as
`python -m waypost.cli.demo_apps`; the agent as `python -m waypost.cli.main agent`.

Against an agent of the user's own (`--http-addr`), nothing it registers can
collide with the user's services: the names are `demo-payment`/`demo-order` and
every ID carries a suffix of this run (`demo-payment-1-3fa2`). Each second it
also says why no order failed: failed attempts retried on another instance,
breakers opening, and the moment the agent's health check took the killed
instance out of discovery.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

import httpx

from .._exceptions import ConfigError
from ..client import make_balancer
from .client import agent_url

SERVICES_MODULE = "waypost.cli.demo_apps"
PAYMENT = "demo-payment"
ORDER = "demo-order"
LIMITS = {"instances": (2, 20), "seconds": (2, 600), "rate": (1, 500)}


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
    role: str, agent: str, name: str, service: str, balancer: str = "round_robin"
) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", SERVICES_MODULE, role, "--agent", agent, "--name", name]
    cmd += ["--balancer", balancer, "--service", service, "--payment", PAYMENT]
    proc, port = _spawn(cmd, r"PORT (\d+)")
    return proc, int(port)


def validate(instances: int, seconds: float, rate: float, balancer: str) -> None:
    """Refuse what cannot run, before starting anything.

    Raises:
        ConfigError: naming the flag and its range.
    """
    for name, value in (("instances", instances), ("seconds", seconds), ("rate", rate)):
        low, high = LIMITS[name]
        if not low <= value <= high:
            why = " (one is killed half-way; one must be left)" if name == "instances" else ""
            raise ConfigError(f"--{name} {value:g}: expected {low} to {high}{why}")
    try:
        make_balancer(balancer)
    except ValueError as exc:
        raise ConfigError(f"--balancer: {exc}") from None


def _start_agent() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "waypost.cli.main", "agent", "--dev"]
    cmd += ["--http", "127.0.0.1:0", "--dns", "off", "--grpc", "off", "--node", "demo"]
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


class _Narrator:
    """Says, once a second, why no order failed: the order service's retries
    and breakers (its /stats) and the agent's view of the killed instance."""

    def __init__(self, agent: str, order_url: str, labels: dict[str, str], out: TextIO) -> None:
        self.agent, self.order_url, self.labels, self.out = agent, order_url, labels, out
        self.retries = 0
        self.breakers: dict[str, str] = {}
        self.victim: str | None = None
        self.killed_at = 0.0
        self.removed = False

    def killed(self, victim: str) -> None:
        self.victim, self.killed_at = victim, time.monotonic()

    async def tell(self, http: httpx.AsyncClient) -> None:
        stats = (await http.get(f"{self.order_url}/stats")).json()
        retries = int(stats.get("retry_budget", {}).get("retries", 0))
        if retries > self.retries:
            self.say(f"{retries - self.retries} failed attempt(s) retried on another instance")
        self.retries = retries  # over a sliding window: it also falls
        for instance, state in stats.get("breakers", {}).items():
            if self.breakers.get(instance, "closed") != state:
                self.say(
                    f"{self.labels.get(instance, instance)}: circuit breaker {_BREAKER[state]}"
                )
            self.breakers[instance] = state
        if self.victim is not None and not self.removed:
            await self._health(http, self.victim)

    async def _health(self, http: httpx.AsyncClient, victim: str) -> None:
        rows = (await http.get(f"{self.agent}/v1/health/service/{PAYMENT}")).json()
        for row in rows:
            if row["Service"]["ID"] != victim:
                continue
            failing = [c for c in row["Checks"] if c["Status"] != "passing"]
            if failing:
                after = time.monotonic() - self.killed_at
                self.removed = True
                self.say(
                    f"{self.labels[victim]}: the agent's health check marked it "
                    f"{failing[0]['Status']} {after:.1f}s after the kill "
                    f"({failing[0]['Output'][:70]!r}): discovery no longer returns it"
                )

    def say(self, text: str) -> None:
        self.out.write(f"       {text}\n")


_BREAKER = {
    "open": "opened: calls skip it",
    "half_open": "half-open: one trial call",
    "closed": "closed again",
}


async def _drive(
    order_url: str,
    seconds: float,
    rate: float,
    kill: Callable[[], str],
    narrator: _Narrator,
    out: TextIO,
) -> tuple[int, int]:
    total = failed = 0
    killed = False
    async with httpx.AsyncClient(base_url=order_url, timeout=5.0) as http:
        for second in range(int(seconds)):
            counts: Counter[str] = Counter()
            if not killed and second >= seconds / 2:
                victim = kill()
                narrator.killed(victim)
                out.write(f"--- SIGKILL {narrator.labels[victim]} ---\n")
                killed = True
            for _ in range(int(rate)):
                started = time.monotonic()
                try:
                    r = await http.get("/order")
                    ok = r.status_code == 200
                    paid_by = r.json().get("paid_by", "?") if ok else "FAILED"
                    counts[narrator.labels.get(paid_by, paid_by)] += 1
                except httpx.HTTPError:
                    ok = False
                    counts["FAILED"] += 1
                total += 1
                failed += 0 if ok else 1
                await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
            spread = "  ".join(f"{k}: {v:3d}" for k, v in sorted(counts.items()))
            out.write(f"t={second + 1:2d}s  {spread}\n")
            await narrator.tell(http)
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
        agent: URL (or HOST:PORT) of a running agent; None starts a `--dev` agent.
        instances: Payment instances to start (one is killed), 2 to 20.
        seconds: Length of the traffic phase, 2 to 600.
        rate: Orders per second, 1 to 500.
        balancer: Balancer the order service uses for `demo-payment`.
        out: Where to print (default stdout).

    Raises:
        ConfigError: an argument out of range, or an agent that cannot be reached.
    """
    validate(instances, seconds, rate, balancer)
    out = out or sys.stdout
    run = secrets.token_hex(2)  # in every ID: a second demo, or the user's own, never collides
    procs: list[subprocess.Popen[str]] = []
    try:
        if agent is None:
            proc, agent = _start_agent()
            procs.append(proc)
            out.write(f"agent: {agent} (a --dev agent of its own, in memory)\n")
        else:
            agent = _reachable(agent_url(agent))
            out.write(f"agent: {agent}\n")
        out.write(
            f"{ORDER} calls {PAYMENT} through waypost's client: {balancer} balancing, "
            "a failed attempt retried on another instance, a breaker per instance\n"
        )
        payments, labels = {}, {}
        for k in range(1, instances + 1):
            service_id = f"{PAYMENT}-{k}-{run}"
            proc, port = _service("payment", agent, service_id, PAYMENT)
            payments[service_id], labels[service_id] = proc, f"payment-{k}"
            procs.append(proc)
            out.write(f"payment-{k}: http://127.0.0.1:{port}, registered as {service_id}\n")
        order, order_port = _service("order", agent, f"{ORDER}-{run}", ORDER, balancer)
        procs.append(order)
        out.write(f"order: http://127.0.0.1:{order_port}, registered as {ORDER}-{run}\n")
        asyncio.run(_wait_passing(agent, PAYMENT, instances))

        def kill() -> str:
            victim = sorted(payments, key=lambda sid: int(labels[sid].split("-")[1]))[-1]
            payments[victim].send_signal(signal.SIGKILL)
            return victim

        url = f"http://127.0.0.1:{order_port}"
        asyncio.run(_wait_order_ready(url))
        narrator = _Narrator(agent, url, labels, out)
        total, failed = asyncio.run(_drive(url, seconds, rate, kill, narrator, out))
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
        if agent is not None:
            _forget(agent, run)


def _forget(agent: str, run: str) -> None:
    """Deregister what is left of this run (the SIGKILLed instance could not):
    on the user's own agent the demo leaves nothing behind."""
    try:
        with httpx.Client(base_url=agent, timeout=5) as http:
            for service_id in http.get("/v1/agent/services").json():
                if service_id.endswith(f"-{run}") and service_id.startswith(("demo-", ORDER)):
                    http.put(f"/v1/agent/service/deregister/{service_id}")
    except httpx.HTTPError:
        pass  # the agent went away (a --dev one of our own): nothing is left to clean


def _reachable(agent: str) -> str:
    try:
        httpx.get(f"{agent}/v1/agent/self", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"--http-addr {agent}: cannot reach a waypost or Consul agent ({exc})"
        ) from exc
    return agent
