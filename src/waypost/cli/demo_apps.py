"""The example services `waypost demo` runs: payment and order, each its own process.

Small ASGI apps served by uvicorn and registered through the client library's
`with_registration` (HTTP check on /health), written as any user of the
library would write them: they import only `waypost.client`'s public names.
Run one alone with

    python -m waypost.cli.demo_apps payment --agent http://127.0.0.1:8500 --name payment-1

(it prints `PORT <n>` once bound). The scenario around them is cli/demo.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..client import (
    AsyncDiscovery,
    AsyncServiceClient,
    HttpCheck,
    Registration,
    with_registration,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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
    agent: str, balancer: str = "round_robin", payment: str = "payment"
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The order service: `GET /order` pays through whichever instance of
    `payment`; `GET /stats` shows its client's breakers and retries."""
    state: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _order_lifespan(agent, balancer, payment, state, receive, send)
            return
        await _drain(receive)
        client: AsyncServiceClient = state["client"]
        if scope["path"] == "/stats":
            stats = client.waypost_transport.statistics().get(payment, {})
            await _json(send, 200, json.loads(json.dumps(stats, default=str)))
            return
        try:
            response = await client.get("/api/payments", timeout=2.0)
            await _json(send, 200, {"order": "ok", "paid_by": response.json()["instance"]})
        except Exception as exc:  # report, do not crash the demo
            await _json(send, 502, {"order": "failed", "error": f"{type(exc).__name__}: {exc}"})

    return app


async def _order_lifespan(
    agent: str, balancer: str, payment: str, state: dict[str, Any], receive: Receive, send: Send
) -> None:
    await receive()
    discovery = AsyncDiscovery(agent)
    state["client"] = AsyncServiceClient(payment, discovery=discovery, balancer=balancer)
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
    payment: str = "payment",
) -> None:
    """Serve one demo service (blocking); prints `PORT <n>` once bound."""
    import uvicorn

    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    inner = payment_app(name) if role == "payment" else order_app(agent, balancer, payment)
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


def main(argv: list[str] | None = None) -> None:
    """`python -m waypost.cli.demo_apps payment|order --agent URL --name NAME`."""
    parser = argparse.ArgumentParser(prog="waypost-demo-service")
    parser.add_argument("role", choices=["payment", "order"])
    parser.add_argument("--agent", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--balancer", default="round_robin")
    parser.add_argument("--service", default=None, help="service name to register as")
    parser.add_argument("--payment", default="payment", help="the payment service's name (order)")
    args = parser.parse_args(argv)
    agent = args.agent or "http://127.0.0.1:8500"
    name = args.name or args.role
    serve(
        args.role,
        agent,
        name,
        port=args.port,
        balancer=args.balancer,
        service=args.service,
        payment=args.payment,
    )


if __name__ == "__main__":
    main()
