"""The agent's ASGI application: Consul's /v1 API, /metrics and the web UI.

It serves what it is given: the runtime builds the API and the metrics and
names the other route sets to mount beside them (the web UI), so this module
depends on none of them but the API it owns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import access, compress, http
from .access import Guard
from .consul import ConsulApi
from .metrics import Metrics

access_log = logging.getLogger("waypost.http")

Mount = Callable[[http.Router], None]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AgentApp:
    """ASGI entry point. Errors become the status codes of `http.error_response`.

    Args:
        consul: Consul's /v1 API.
        metrics: /metrics, which also times every request answered here.
        mounts: Each adds its routes beside the API (`ui.mount`: the web UI;
            the ACL endpoints). Routes outside /v1/ that declare no access are
            static files, served to anyone (the UI asks for a token itself).
        guard: Enforces every route's ACL declaration; None when ACLs are off.
    """

    def __init__(
        self,
        consul: ConsulApi,
        metrics: Metrics,
        mounts: Iterable[Mount] = (),
        guard: Guard | None = None,
    ) -> None:
        self.router = http.Router()
        self.consul = consul
        consul.routes(self.router)
        self.metrics = metrics
        self.router.add("GET", "/metrics", self.metrics.handle, access.agent(access.READ))
        for mount in mounts:
            mount(self.router)
        for table in [*self.router.exact.items(), *self.router.prefixes]:
            path, routes = table
            for method, (handler, declared) in list(routes.items()):
                if declared is None and not path.startswith("/v1/"):
                    routes[method] = (handler, access.PUBLIC)
        self.guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request = http.Request(scope, receive)
        response = await self.respond(request, started)
        if access_log.isEnabledFor(logging.DEBUG):  # one check per request when off
            _log_access(scope, request, response, time.perf_counter() - started)
        await http.send(send, response)

    async def respond(
        self, request: http.Request, started: float, route: http.Matched | None = None
    ) -> http.Response:
        """The answer to `request`, counted in the metrics: routing, the `?dc=`
        check, the ACL guard, the handler, errors as status codes. The ASGI
        entry above and the protocol's write fast path (api/fastwrite.py) both
        answer through here, so they cannot answer differently. `route`: the
        router's match when the caller has it already."""
        try:
            handler, rest, declared = route or self.router.route(request.method, request.path)
            self.consul.check_scope(request)  # ?dc=dc2: 500, ?ns=x: 400, nothing done
            if self.guard is not None:
                pending = self.guard.enforce(request, rest, declared)  # the one ACL check
                if pending is not None:  # a declaration that reads the body
                    await pending
            response = await handler(request, rest)
        except Exception as exc:  # every error becomes an answer, never a dropped connection
            response = http.error_response(exc)
        if response.body:
            await compress.encode_off_loop(response, compress.accepts_gzip(request.headers))
        else:  # what encode_off_loop does for no body (most writes), without
            # walking the request's headers for Accept-Encoding
            response.headers.append(compress.VARY)
        if request.method == "HEAD":
            response.body = b""
        self.metrics.observe(request.method, response.status, time.perf_counter() - started)
        return response


def _log_access(
    scope: dict[str, Any], request: http.Request, response: http.Response, elapsed: float
) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client") or ("-", 0)
    access_log.debug(
        "request: method=%s url=%s%s status=%d duration=%.1fms from=%s",
        request.method,
        request.path,
        f"?{query}" if query else "",
        response.status,
        elapsed * 1000,
        client[0],
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
