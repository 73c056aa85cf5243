"""The agent's hot writes answered in the HTTP protocol, without uvicorn's ASGI cycle.

Every client registers its instances and sends TTL heartbeats:
`PUT /v1/agent/service/register`, `.../service/deregister/<id>`,
`.../check/{pass,warn,fail,update}/<id>`. Through ASGI each one costs
uvicorn's task start, its `receive()` (an `asyncio.Event` wait for the
body), two `send()` calls through its header checks, and the wrapper's
exception handling: about a third of a durable registration's instructions
in the agent (docs/benchmarks.md, Agent 6).

Here the protocol (api/protocol.py) hands each request to `FastWrites.take`
where it would start the ASGI task. A request for one of these routes that
needs nothing uvicorn's cycle gives is collected by the protocol itself (the
body arrives through the same parser callbacks, under the same read deadline
as every request) and answered by `AgentApp.respond`, the one function the
ASGI entry calls too: the same routing, `?dc=` check, ACL guard, handler
(decode, plan, `Catalog.write`), error mapping and metrics, so the answer
cannot differ; only its bytes are written here, status line, uvicorn's
default headers, the handler's, Content-Length and (when the connection
ends) `connection: close`, in one `transport.write()`. The write runs as
one task registered with the protocol's tasks, as uvicorn's own are: the
concurrency limit counts it and a graceful shutdown waits for it; a
pipelined request behind it waits in uvicorn's queue until it is answered.

Anything else goes the normal way, never half-served: another route or
method, `Transfer-Encoding` (a chunked body) or `Expect: 100-continue`, a
body over BODY_LIMIT (uvicorn pauses reading past it until its own
`receive()` resumes), a client not reading its answers (write buffer
full), access logging on, and uvicorn's 503 stand-in past limit_concurrency
(api/protocol.py never offers those).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from . import http, wire
from .app import AgentApp, access_log

log = logging.getLogger("waypost.api")

BODY_LIMIT = 1 << 16  # uvicorn's HIGH_WATER_LIMIT: a registration is a few KB
ROUTES_LIMIT = 4096  # paths remembered (each names a service or check ID)

Pending = tuple[RequestResponseCycle, http.Matched, float]  # a write waiting for its body


class FastWrites:
    """The write fast path of one agent's HTTP listeners."""

    def __init__(self, app: AgentApp, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        consul = app.consul
        self._handlers = frozenset(
            {
                consul.service_register,
                consul.service_deregister,
                consul.check_pass,
                consul.check_warn,
                consul.check_fail,
                consul.check_update,
            }
        )
        self._routes: dict[str, http.Matched | None] = {}  # path -> its PUT route, None: not ours
        self.answered = 0  # statistics: writes answered here
        self.fallbacks = 0  # writes to these routes sent the normal way

    def take(self, cycle: RequestResponseCycle) -> Pending | None:
        """`cycle`'s write if it is one answered here (the protocol then
        calls `start` once the body is in), else None: the normal way."""
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        if scope["method"] != "PUT":
            return None
        path, routes = scope["path"], self._routes
        route = routes[path] if path in routes else self._route(path)  # a seen path: no call
        if route is None:
            return None
        if (
            cycle.flow.write_paused
            or not _plain(scope["headers"])
            or access_log.isEnabledFor(logging.DEBUG)
        ):
            self.fallbacks += 1
            return None
        return cycle, route, time.perf_counter()

    def _route(self, path: str) -> http.Matched | None:
        if path in self._routes:
            return self._routes[path]
        try:
            route: http.Matched | None = self.app.router.route("PUT", path)
        except http.HttpError:
            route = None  # the normal path answers the 404/405
        if route is not None and route[0] not in self._handlers:
            route = None
        if len(self._routes) >= ROUTES_LIMIT:
            self._routes.clear()  # IDs are the client's: keep the table bounded
        self._routes[path] = route
        return route

    def start(self, pending: Pending, tasks: set[asyncio.Task[None]]) -> None:
        """Answer a write whose body is in: one task, counted in `tasks` (the
        protocol's, which limit_concurrency and a graceful shutdown watch)."""
        cycle, route, started = pending
        request = http.Request(cycle.scope, _no_more_body, bytes(cycle.body))  # type: ignore[arg-type]
        task = self.loop.create_task(self._answer(cycle, request, route, started))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _answer(
        self,
        cycle: RequestResponseCycle,
        request: http.Request,
        route: http.Matched,
        started: float,
    ) -> None:
        try:
            response = await self.app.respond(request, started, route)
        except BaseException:
            cycle.transport.close()  # cancelled past the graceful shutdown's deadline
            raise
        if cycle.disconnected or cycle.transport.is_closing():
            return  # as uvicorn's send(): nobody to answer
        try:
            wire.finish(cycle, wire.encode(response, cycle.default_headers, cycle.keep_alive))
        except Exception:  # a bug: as uvicorn does, log and close rather than leave it waiting
            log.exception("the write fast path could not send its answer")
            cycle.transport.close()
            return
        self.answered += 1

    def statistics(self) -> dict[str, float]:
        return {"fast_writes": self.answered, "fast_write_fallbacks": self.fallbacks}


def _plain(headers: list[tuple[bytes, bytes]]) -> bool:
    """No chunked body, no `Expect`, and a body small enough to take whole."""
    for name, value in headers:
        # wire.CYCLE_BODY_HEADERS by equality: bytes compare their lengths
        # first, where a set lookup hashes each name (six per request).
        if name == b"content-length":
            if not (value.isdigit() and int(value) <= BODY_LIMIT):
                return False
        elif name == b"transfer-encoding" or name == b"expect":
            return False
    return True


async def _no_more_body() -> dict[str, Any]:
    return {"type": "http.disconnect"}  # never asked: the body is given whole
