"""Failover with a SIGKILLed instance, the ASGI helper, and the demo, on a real agent."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import signal
import subprocess
from collections import Counter
from typing import Any

import httpx
import pytest

from waypost import AsyncDiscovery, AsyncServiceClient, HttpCheck, Registration
from waypost.cli.demo import _service, run_demo
from waypost.cli.demo_apps import payment_app
from waypost.client import lifespan, with_registration

_names = itertools.count()


def name() -> str:
    return f"failsvc{os.getpid()}x{next(_names)}"


async def test_sigkill_one_of_three_under_load_no_failed_get(agent: Any) -> None:
    svc = name()
    procs: list[subprocess.Popen[str]] = []
    try:
        for k in range(3):
            proc, _ = _service("payment", agent.http_url, f"{svc}-{k}", service=svc)
            procs.append(proc)
        async with AsyncDiscovery(agent.http_url, wait=5) as discovery:
            async for found in discovery.watch(svc):
                if len(found) == 3:
                    break
            async with AsyncServiceClient(svc, discovery=discovery, balancer="round_robin") as c:
                outcomes: Counter[str] = Counter()

                async def load(worker: int) -> None:
                    for _ in range(40):
                        try:
                            r = await c.get("/api/payments")
                            outcomes[
                                "ok" if r.status_code == 200 else f"status {r.status_code}"
                            ] += 1
                        except httpx.HTTPError as exc:
                            outcomes[type(exc).__name__] += 1
                        await asyncio.sleep(0.005)

                workers = [asyncio.create_task(load(w)) for w in range(8)]
                while sum(outcomes.values()) < 60:
                    await asyncio.sleep(0.01)
                procs[0].send_signal(signal.SIGKILL)
                await asyncio.gather(*workers)
        assert outcomes == {"ok": 320}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_with_registration_asgi_lifespan_and_health(agent: Any) -> None:
    svc = name()
    reg = Registration(svc, port=4300, agent=agent.http_url, id=f"{svc}-1")
    app = with_registration(payment_app("p"), reg)
    sent: list[dict[str, Any]] = []
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await incoming.put({"type": "lifespan.startup"})
    await incoming.put({"type": "lifespan.shutdown"})

    async def receive() -> Any:
        message = await incoming.get()
        if message["type"] == "lifespan.shutdown":
            services = httpx.get(f"{agent.http_url}/v1/agent/services").json()
            assert reg.id in services  # registered while running
        return message

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert reg.id not in httpx.get(f"{agent.http_url}/v1/agent/services").json()

    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        health = await http.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "passing"}
        assert (await http.get("/api/payments")).json()["instance"] == "p"


async def test_lifespan_factory(agent: Any) -> None:
    svc = name()
    reg = Registration(
        svc, port=4301, agent=agent.http_url, check=HttpCheck(interval="30s"), handle_signals=True
    )
    async with lifespan(reg)(object()):
        assert reg.id in httpx.get(f"{agent.http_url}/v1/agent/services").json()
        assert reg.handle_signals is False  # the ASGI server owns the signals
    assert reg.id not in httpx.get(f"{agent.http_url}/v1/agent/services").json()


def test_demo_runs_without_failed_orders(agent: Any) -> None:
    out = io.StringIO()
    # 2 s, the shortest run: the CLI test (tests/cli/test_demo.py) runs 4 s and reads the story
    assert run_demo(agent=agent.http_url, seconds=2, rate=15, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "SIGKILL payment-3" in text and "30 orders, 0 failed" in text


async def test_with_registration_app_that_ignores_lifespan(agent: Any) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # many minimal apps just return on lifespan

    svc = name()
    reg = Registration(svc, port=4302, agent=agent.http_url, id=f"{svc}-1")
    app = with_registration(bare, reg)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []
    registered_while_running: list[bool] = []

    async def receive() -> Any:
        message = messages.pop(0)
        if message["type"] == "lifespan.shutdown":
            services = httpx.get(f"{agent.http_url}/v1/agent/services").json()
            registered_while_running.append(reg.id in services)
        return message

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert registered_while_running == [True]
    assert reg.id not in httpx.get(f"{agent.http_url}/v1/agent/services").json()


@pytest.mark.parametrize("then_raise", [True, False], ids=["raises", "returns"])
async def test_with_registration_app_whose_startup_fails(agent: Any, then_raise: bool) -> None:
    """startup.failed is the app's answer: nothing is registered and no
    startup.complete follows it, whether the app then raises or returns."""

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        if then_raise:
            raise RuntimeError("no database")

    svc = name()
    reg = Registration(svc, port=4303, agent=agent.http_url, id=f"{svc}-1")
    app = with_registration(failing, reg)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []
    registered: list[bool] = []

    async def receive() -> Any:
        services = httpx.get(f"{agent.http_url}/v1/agent/services").json()
        registered.append(reg.id in services)
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    if then_raise:
        with pytest.raises(RuntimeError, match="no database"):
            await app({"type": "lifespan"}, receive, send)
    else:
        await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.failed"]
    assert True not in registered
    assert reg.id not in httpx.get(f"{agent.http_url}/v1/agent/services").json()
