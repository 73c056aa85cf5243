"""`waypost demo`: the seed's order/payment scenario, runnable on one machine.

    run_demo()   starts an agent (unless given one), three payment instances and
                 an order service, each a real process; sends steady traffic
                 to the order service, which calls `payment` through discovery;
                 prints which instance served each second; SIGKILLs one payment
                 instance half-way; and shows traffic moving away with no
                 failed request.

The payment and order services are small ASGI apps served by uvicorn and
registered through `with_registration` (HTTP check on /health). Run one alone
with `python -m waypost.client._demo payment --agent http://127.0.0.1:8500`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import httpx

from ._asgi import Message, Receive, Scope, Send, with_registration
from ._checks import HttpCheck
from ._discovery import AsyncDiscovery
from ._registration import Registration
from ._service_client import AsyncServiceClient


async def _json(send: Send, status: int, data: dict[str, Any]) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    message: Message = {"more_body": True}
    while message.get("more_body"):
        message = await receive()


def payment_app(name: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A payment instance: answers `/api/payments` with its own name."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("payment_app has no lifespan")  # with_registration handles it
        await _drain(receive)
        await _json(send, 200, {"instance": name, "status": "paid"})

    return app


def order_app(
    agent: str, balancer: str = "round_robin"
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The order service: `GET /order` pays through whichever payment instance."""
    state: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _order_lifespan(agent, balancer, state, receive, send)
            return
        await _drain(receive)
        client: AsyncServiceClient = state["client"]
        try:
            response = await client.get("/api/payments", timeout=2.0)
            await _json(send, 200, {"order": "ok", "paid_by": response.json()["instance"]})
        except Exception as exc:  # report, do not crash the demo
            await _json(send, 502, {"order": "failed", "error": f"{type(exc).__name__}: {exc}"})

    return app


async def _order_lifespan(
    agent: str, balancer: str, state: dict[str, Any], receive: Receive, send: Send
) -> None:
    await receive()
    discovery = AsyncDiscovery(agent)
    state["client"] = AsyncServiceClient("payment", discovery=discovery, balancer=balancer)
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await state["client"].aclose()
    await discovery.aclose()
    await send({"type": "lifespan.shutdown.complete"})


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve(
    role: str,
    agent: str,
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    balancer: str = "round_robin",
    service: str | None = None,
) -> None:
    """Serve one demo service (blocking); prints `PORT <n>` once bound."""
    import uvicorn

    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    inner = payment_app(name) if role == "payment" else order_app(agent, balancer)
    registration = Registration(
        service or role,
        port=bound,
        address=host,
        id=name,
        agent=agent,
        check=HttpCheck("/health", interval="1s", timeout="1s", deregister_after="1m"),
    )
    app = with_registration(inner, registration)
    print(f"PORT {bound}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


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
    cmd = [sys.executable, "-m", "waypost.client._demo", role, "--agent", agent, "--name", name]
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


def main(argv: list[str] | None = None) -> None:
    """`python -m waypost.client._demo payment|order --agent URL --name NAME`."""
    parser = argparse.ArgumentParser(prog="waypost-demo-service")
    parser.add_argument("role", choices=["payment", "order", "all"])
    parser.add_argument("--agent", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--balancer", default="round_robin")
    parser.add_argument("--service", default=None, help="service name to register as")
    args = parser.parse_args(argv)
    if args.role == "all":
        sys.exit(run_demo(agent=args.agent, balancer=args.balancer))
    agent = args.agent or "http://127.0.0.1:8500"
    name = args.name or args.role
    serve(args.role, agent, name, port=args.port, balancer=args.balancer, service=args.service)


if __name__ == "__main__":
    main()
