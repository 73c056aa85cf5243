"""ASGI helpers: register while the app runs, and answer the health check.

Two ways in:

    app = FastAPI(lifespan=waypost.client.lifespan(registration))   # Starlette/FastAPI
    app = waypost.client.with_registration(app, registration)       # any ASGI app

`with_registration` wraps the app's own lifespan: the service is registered
only after the app reports `lifespan.startup.complete` (so it receives traffic
only once ready; an app that reports `startup.failed` is never registered) and
deregistered as soon as shutdown begins (so traffic drains away before the app
tears down). It also answers `GET /health` itself (200, or 503 when the
`healthy` callback says so) unless the app should.
Signals are left to the server (uvicorn, hypercorn), which runs the lifespan
shutdown on SIGTERM; the registration is therefore created with
`handle_signals=False` semantics here.

With gunicorn and several workers, every worker would register the same
`<name>-<host>-<port>` ID; register once, from the master's `when_ready` hook
with a plain `Registration(...).__enter__()`, and exit it in `on_exit`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from .._exceptions import RegistrationError
from ._registration import Registration

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Healthy = Callable[[], bool | Awaitable[bool]]


def lifespan(
    registration: Registration,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette/FastAPI `lifespan=` factory that keeps `registration` active.

    Args:
        registration: What to register while the app runs.
    """

    @contextlib.asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[None]:
        registration.handle_signals = False
        async with registration:
            yield

    return _lifespan


class RegisteredApp:
    """ASGI middleware: registration bound to the lifespan, plus a health route.

    Args:
        app: The wrapped ASGI application.
        registration: What to register while the app runs.
        health_path: Path answered with the health status (None: pass through).
        healthy: Optional callback deciding the health status.
    """

    def __init__(
        self,
        app: ASGIApp,
        registration: Registration,
        *,
        health_path: str | None = "/health",
        healthy: Healthy | None = None,
    ) -> None:
        self.app = app
        self.registration = registration
        self.registration.handle_signals = False
        self.health_path = health_path
        self.healthy = healthy
        self._active = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == self.health_path:
            await self._health(send)
        else:
            await self.app(scope, receive, send)

    async def _health(self, send: Send) -> None:
        ok = True
        if self.healthy is not None:
            result = self.healthy()
            ok = bool(await result) if inspect.isawaitable(result) else bool(result)
        body = json.dumps({"status": "passing" if ok else "critical"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200 if ok else 503,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = False  # the app sent startup.complete or startup.failed

        async def recv() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._leave()
            return message

        async def snd(message: Message) -> None:
            nonlocal answered
            if message["type"] == "lifespan.startup.complete":
                answered = True
                message = await self._enter(message)
            elif message["type"] == "lifespan.startup.failed":
                answered = True  # its failure is the answer: never register, never complete
            await send(message)

        try:
            await self.app(scope, recv, snd)
        except Exception:
            if answered:
                raise
        if not answered:  # the app has no lifespan support (it raised or returned)
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        await send(await self._enter({"type": "lifespan.startup.complete"}))
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self._leave()
        await send({"type": "lifespan.shutdown.complete"})

    async def _enter(self, message: Message) -> Message:
        try:
            await self.registration.__aenter__()
        except RegistrationError as exc:
            return {"type": "lifespan.startup.failed", "message": str(exc)}
        self._active = True
        return message

    async def _leave(self) -> None:
        if self._active:
            self._active = False
            await self.registration.__aexit__(None, None, None)


def with_registration(
    app: ASGIApp,
    registration: Registration,
    *,
    health_path: str | None = "/health",
    healthy: Healthy | None = None,
) -> RegisteredApp:
    """Wrap an ASGI app so it registers while running and answers `/health`.

    Args:
        app: The ASGI application.
        registration: What to register.
        health_path: Path of the health route, or None to leave it to the app.
        healthy: Optional callback (sync or async) returning the health status.
    """
    return RegisteredApp(app, registration, health_path=health_path, healthy=healthy)
