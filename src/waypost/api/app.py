"""The agent's ASGI application: Consul's /v1 API, /metrics and the web UI."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import http
from .consul import ConsulApi
from .metrics import Metrics

if TYPE_CHECKING:
    from ..agent.runtime import Agent

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AgentApp:
    """ASGI entry point. Errors become the status codes of `http.error_response`."""

    def __init__(self, agent: Agent) -> None:
        self.router = http.Router()
        ConsulApi(agent).routes(self.router)
        self.metrics = Metrics(agent)
        self.router.add("GET", "/metrics", self.metrics.handle)
        from ..ui import mount  # the UI is optional to read, not to serve

        mount(self.router, agent)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request = http.Request(scope, receive)
        try:
            handler, rest = self.router.match(request.method, request.path)
            response = await handler(request, rest)
        except Exception as exc:  # every error becomes an answer, never a dropped connection
            response = http.error_response(exc)
        if request.method == "HEAD":
            response.body = b""
        self.metrics.observe(request.method, response.status, time.perf_counter() - started)
        await http.send(send, response)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
