"""The small ASGI layer under the Consul API: requests, responses, errors, routing.

A raw ASGI app with a dict router rather than a framework: discovery reads are
the hot path (tens of thousands a second), and each framework layer costs
microseconds that show up directly in the requests/s figure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec

from .._exceptions import (
    AccessDenied,
    AclDisabled,
    NotFoundError,
    OutcomeUnknown,
    RefusedError,
    StorageError,
    StoreBusy,
    StoreUnavailable,
    TooManyConnections,
    ValidationError,
)

log = logging.getLogger("waypost.api")

MAX_BODY = 1 << 20  # 1 MiB: a registration is a few KB

_JSON_ENCODER = msgspec.json.Encoder()


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    __slots__ = (
        "_body",
        "_receive",
        "access",
        "authz",
        "connection_lost",
        "headers",
        "method",
        "parsed",
        "path",
        "query",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        body: bytes | None = None,
    ) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        raw_query: bytes = scope["query_string"]
        self.query = _parse_query(raw_query) if raw_query else {}
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        self._receive = receive
        # Given when the caller has read it already (the write fast path, api/fastwrite.py).
        self._body: bytes | None = body
        # Set by the ACL guard (api/access.py) when ACLs are on; None otherwise.
        self.authz: Any = None
        self.access: Any = None
        self.parsed: dict[type, Any] = {}  # bodies decoded once (api/decode.py body_of)
        extensions = scope.get("extensions")
        # Resolves when the client's connection closes (api/protocol.py); None elsewhere.
        self.connection_lost: asyncio.Future[None] | None = (
            extensions.get("waypost.connection_lost") if extensions else None
        )

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def has(self, name: str) -> bool:
        return name in self.query

    def read_already(self, limit: int = MAX_BODY) -> bytes | None:
        """The body if it is in already and within `limit` (what `body()`
        would return at once), else None: then await `body()`."""
        body = self._body
        return body if body is not None and len(body) <= limit else None

    async def body(self, limit: int = MAX_BODY) -> bytes:
        """The whole body, at most `limit` bytes (413 past it).

        How long a client may take to send it is bounded by the connection's
        read deadline (api/protocol.py), which closes a stalled connection.
        Read once: the ACL guard and the handler may both ask for it.
        """
        if self._body is None:
            self._body = await self._read_body(limit)
        elif len(self._body) > limit:  # read by the protocol: the same limit all the same
            raise HttpError(413, f"Request body too large: the limit is {limit} bytes")
        return self._body

    async def _read_body(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise HttpError(408, "the client closed the connection before its body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"Request body too large: the limit is {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


_QUERIES: dict[bytes, dict[str, list[str]]] = {}
QUERY_CACHE_LIMIT = 4096


def _parse_query(raw: bytes) -> dict[str, list[str]]:
    """The parsed query string, cached by its bytes: the same reads come again
    and again (a `?filter=` costs 6 µs to parse, a lookup well under one).
    The dict is shared between requests: read it, never change it."""
    found = _QUERIES.get(raw)
    if found is None:
        found = parse_qs(raw.decode("latin-1"), keep_blank_values=True)
        if len(_QUERIES) >= QUERY_CACHE_LIMIT:
            _QUERIES.clear()
        _QUERIES[raw] = found
    return found


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class Streaming(Response):
    """A response whose body is sent as it comes (`/v1/agent/monitor`), until
    the iterator ends; no Content-Length."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: AsyncIterator[bytes], headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(200, b"", headers)
        self.chunks = chunks


def text(status: int, message: str) -> Response:
    return Response(status, message.encode(), [(b"content-type", b"text/plain; charset=utf-8")])


def json(data: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return json_bytes(_JSON_ENCODER.encode(data), headers)


def json_bytes(body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(200, body, [(b"content-type", b"application/json"), *(headers or [])])


def empty() -> Response:
    return Response(200, b"", [])


Handler = Callable[[Request, str], Awaitable[Response]]
Route = tuple[Handler, Any]  # the handler and what it needs under ACLs (api/access.py)
Matched = tuple[Handler, str, Any]  # a route matched: handler, the path after its prefix, access


class Router:
    """Exact paths in a dict; paths ending in an ID matched by prefix.

    Each route carries its ACL declaration (`access`, an `api.access.Access`):
    what a request needs before the handler runs. A route added without one
    is open to management tokens only when ACLs are on (see docs/security.md).
    """

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Route]] = {}
        self.prefixes: list[tuple[str, dict[str, Route]]] = []

    def add(self, methods: str, path: str, handler: Handler, access: Any = None) -> None:
        if path.endswith("/") and path != "/":
            table = next((t for p, t in self.prefixes if p == path), None)
            if table is None:
                table = {}
                self.prefixes.append((path, table))
                self.prefixes.sort(key=lambda pt: -len(pt[0]))
        else:
            table = self.exact.setdefault(path, {})
        for method in methods.split():
            table[method] = (handler, access)

    def routes(self) -> list[tuple[str, str, Any]]:
        """Every (method, path, access) registered."""
        tables = [*self.exact.items(), *self.prefixes]
        return [(m, path, route[1]) for path, t in tables for m, route in t.items()]

    def match(self, method: str, path: str) -> tuple[Handler, str]:
        handler, rest, _ = self.route(method, path)
        return handler, rest

    def route(self, method: str, path: str) -> Matched:
        """The handler, the rest of the path after its prefix, and its access."""
        table = self.exact.get(path)
        rest = ""
        if table is None:
            for prefix, candidate in self.prefixes:
                if path.startswith(prefix):
                    # uvicorn has already percent-decoded the path: decode no further.
                    table, rest = candidate, path[len(prefix) :]
                    break
        if table is None:
            raise HttpError(404, f"Invalid URL path: no endpoint at {path}")
        route = table.get(method)
        if route is None:
            allowed = ", ".join(sorted(table))
            raise HttpError(405, f"method {method} not allowed: use {allowed}")
        return route[0], rest, route[1]


def error_response(exc: Exception) -> Response:
    """Map our exceptions to status codes in one place."""
    if isinstance(exc, HttpError):
        return text(exc.status, str(exc))
    if isinstance(exc, ValidationError):
        return text(400, str(exc))
    if isinstance(exc, NotFoundError):
        return text(404, str(exc))
    if isinstance(exc, StorageError):
        log.warning("store refused a write: error=%s", exc)
    if isinstance(exc, RefusedError):
        return text(500, str(exc))
    if isinstance(exc, AccessDenied):
        return text(403, str(exc))
    if isinstance(exc, AclDisabled):
        return text(401, str(exc))
    if isinstance(exc, TooManyConnections):
        return text(429, str(exc))
    if isinstance(exc, OutcomeUnknown):
        return text(503, f"the outcome is unknown: {exc}")
    if isinstance(exc, StoreBusy):
        return text(503, f"store busy: {exc}")
    if isinstance(exc, StoreUnavailable):
        return text(503, f"store unavailable: {exc}")
    if isinstance(exc, StorageError):
        return text(500, str(exc))
    log.exception("unexpected error", exc_info=exc)
    return text(500, f"internal error: {type(exc).__name__}")


async def send(send_fn: Callable[[dict[str, Any]], Awaitable[None]], response: Response) -> None:
    headers = response.headers
    if isinstance(response, Streaming):
        await _stream(send_fn, response)
        return
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send_fn({"type": "http.response.start", "status": response.status, "headers": headers})
    await send_fn({"type": "http.response.body", "body": response.body})


async def _stream(
    send_fn: Callable[[dict[str, Any]], Awaitable[None]], response: Streaming
) -> None:
    await send_fn({"type": "http.response.start", "status": 200, "headers": response.headers})
    try:
        async for chunk in response.chunks:
            await send_fn({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await send_fn({"type": "http.response.body", "body": b""})
