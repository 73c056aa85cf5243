"""A small Kubernetes REST client on httpx: requests, paginated lists, watch streams.

Why not a Kubernetes client library: none of the Python ones gets list/watch
right (on 410 they retry the same resourceVersion, or reset without reporting
deletions, or ignore bookmarks; see docs/kubernetes.md), and list/watch is all
waypost needs. httpx is already a dependency, speaks HTTP/1.1 streaming with a
read timeout per chunk, takes an `ssl.SSLContext` (CA bundle, client
certificates) and has a sync twin with the same API, so the async source, the
sync `Discovery` and `k8s-sync` share one request path.

Every error becomes a `KubernetesError` carrying the HTTP code and the Status
object's reason; 410 is `ResourceGone`. A 401 re-reads the token file and
retries once: a rotated service-account token is not an outage; with an
exec credential plugin, the plugin runs again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx

from .._exceptions import KubernetesError, ResourceGone
from .config import KubeConfig

Obj = dict[str, Any]


def _client_args(config: KubeConfig, timeout: float) -> dict[str, Any]:
    verify: Any = config.ssl_context() if config.server.startswith("https://") else False
    return {
        "base_url": config.server,
        "verify": verify,
        "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        "headers": {"Accept": "application/json", "User-Agent": "waypost"},
    }


async def _auth_async(config: KubeConfig) -> dict[str, str]:
    """The auth headers; an exec plugin that must run runs on a thread, not the loop."""
    if config.auth_due():
        return await asyncio.to_thread(config.auth_headers)
    return config.auth_headers()


def error_from(status: int, body: bytes, headers: httpx.Headers, what: str) -> KubernetesError:
    """A `KubernetesError` (or `ResourceGone`) from an error answer or Status object."""
    reason, message = "", body[:300].decode(errors="replace")
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            reason = str(doc.get("reason", ""))
            message = str(doc.get("message", message))
    except ValueError:
        pass
    retry_after = _retry_after(headers.get("Retry-After"))
    cls = ResourceGone if status == 410 else KubernetesError
    text = f"Kubernetes API: {what} answered {status} {reason}: {message}".replace(" : ", ": ")
    return cls(text, code=status, reason=reason, retry_after=retry_after)


def status_error(status: Obj, what: str) -> KubernetesError:
    """The error an in-stream `ERROR` event carries (a Status object)."""
    code = int(status.get("code") or 0)
    body = json.dumps(status).encode()
    return error_from(code, body, httpx.Headers(), what)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _unreachable(config: KubeConfig, what: str, exc: Exception) -> KubernetesError:
    return KubernetesError(
        f"cannot reach the Kubernetes API at {config.server} ({what}): {type(exc).__name__}: {exc}"
    )


def decode_event(line: bytes, what: str) -> Obj:
    """One watch event (a JSON object per line).

    Raises:
        KubernetesError: The line is not a watch event.
    """
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise KubernetesError(f"Kubernetes API: {what} sent a line that is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise KubernetesError(f"Kubernetes API: {what} sent an event without an object")
    return event


def _retry_401(config: KubeConfig, status: int, attempt: int) -> bool:
    """A first 401 with new credentials to try (token file re-read, plugin to re-run)."""
    return status == 401 and attempt == 1 and config.refresh_credentials()


class ApiClient:
    """The async REST client (one connection pool per API server).

    Args:
        config: Where the server is and how to authenticate.
        timeout: Seconds for one ordinary request.
    """

    def __init__(self, config: KubeConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self._timeout = timeout
        self._generation = config.cert_generation
        self._http = self._new_client()
        self._retired: set[asyncio.Future[None]] = set()

    def _new_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
        return httpx.AsyncClient(limits=limits, **_client_args(self.config, self._timeout))

    def _client(self) -> httpx.AsyncClient:
        """The pool to use; a fresh one once an exec plugin rotated the client
        certificate (the old one closes, a watch on it reconnects)."""
        if self.config.cert_generation != self._generation:
            self._generation = self.config.cert_generation
            old, self._http = self._http, self._new_client()
            closing = asyncio.ensure_future(old.aclose())
            self._retired.add(closing)
            closing.add_done_callback(self._retired.discard)
        return self._http

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Obj | None = None,
    ) -> Obj:
        """One request; the decoded JSON answer.

        Raises:
            KubernetesError: An error answer, or no answer.
        """
        what = f"{method} {path}"
        for attempt in (1, 2):
            headers = await _auth_async(self.config)
            try:
                response = await self._client().request(
                    method, path, params=params, json=body, headers=headers
                )
            except httpx.HTTPError as exc:
                raise _unreachable(self.config, what, exc) from exc
            if _retry_401(self.config, response.status_code, attempt):
                continue
            if response.status_code >= 300:
                raise error_from(response.status_code, response.content, response.headers, what)
            return _json(response, what)
        raise AssertionError("unreachable")

    async def list_page(self, path: str, params: dict[str, str]) -> Obj:
        """One page of a list (`limit`, `continue` in `params`)."""
        return await self.request("GET", path, params=params)

    @asynccontextmanager
    async def watch(
        self, path: str, params: dict[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[Obj]]:
        """Open a watch stream: the events, one JSON object per line.

        Raises:
            KubernetesError: The watch was refused (410 is `ResourceGone`).
        """
        what = f"watch {path}"
        timeout = httpx.Timeout(10.0, read=read_timeout)
        for attempt in (1, 2):
            headers = await _auth_async(self.config)
            http = self._client()
            request = http.build_request(
                "GET", path, params=params, headers=headers, timeout=timeout
            )
            try:
                response = await http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _unreachable(self.config, what, exc) from exc
            try:
                if _retry_401(self.config, response.status_code, attempt):
                    continue
                if response.status_code != 200:
                    body = await response.aread()
                    raise error_from(response.status_code, body, response.headers, what)
                yield self._events(response, what)
                return
            finally:
                await response.aclose()

    async def _events(self, response: httpx.Response, what: str) -> AsyncIterator[Obj]:
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    yield decode_event(line.encode(), what)
        except httpx.HTTPError as exc:
            raise _unreachable(self.config, what, exc) from exc

    async def aclose(self) -> None:
        await asyncio.gather(*self._retired, return_exceptions=True)
        await self._http.aclose()


class SyncApiClient:
    """The blocking twin of `ApiClient` (for the sync `Discovery`)."""

    def __init__(self, config: KubeConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self._timeout = timeout
        self._generation = config.cert_generation
        self._http = httpx.Client(**_client_args(config, timeout))

    def _client(self) -> httpx.Client:
        """As `ApiClient._client`: a fresh pool after a certificate rotation."""
        if self.config.cert_generation != self._generation:
            self._generation = self.config.cert_generation
            self._http.close()
            self._http = httpx.Client(**_client_args(self.config, self._timeout))
        return self._http

    def request(self, method: str, path: str, *, params: dict[str, str] | None = None) -> Obj:
        what = f"{method} {path}"
        for attempt in (1, 2):
            headers = self.config.auth_headers()
            try:
                response = self._client().request(method, path, params=params, headers=headers)
            except httpx.HTTPError as exc:
                raise _unreachable(self.config, what, exc) from exc
            if _retry_401(self.config, response.status_code, attempt):
                continue
            if response.status_code >= 300:
                raise error_from(response.status_code, response.content, response.headers, what)
            return _json(response, what)
        raise AssertionError("unreachable")

    @contextmanager
    def watch(
        self, path: str, params: dict[str, str], read_timeout: float
    ) -> Iterator[Iterator[Obj]]:
        what = f"watch {path}"
        timeout = httpx.Timeout(10.0, read=read_timeout)
        for attempt in (1, 2):
            headers = self.config.auth_headers()
            http = self._client()
            request = http.build_request(
                "GET", path, params=params, headers=headers, timeout=timeout
            )
            try:
                response = http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _unreachable(self.config, what, exc) from exc
            try:
                if _retry_401(self.config, response.status_code, attempt):
                    continue
                if response.status_code != 200:
                    raise error_from(response.status_code, response.read(), response.headers, what)
                yield self._events(response, what)
                return
            finally:
                response.close()

    def _events(self, response: httpx.Response, what: str) -> Iterator[Obj]:
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield decode_event(line.encode(), what)
        except httpx.HTTPError as exc:
            raise _unreachable(self.config, what, exc) from exc

    def close(self) -> None:
        self._http.close()


def _json(response: httpx.Response, what: str) -> Obj:
    try:
        doc = response.json()
    except ValueError as exc:
        raise KubernetesError(
            f"Kubernetes API: {what} answered with a body that is not JSON"
        ) from exc
    if not isinstance(doc, dict):
        raise KubernetesError(f"Kubernetes API: {what} answered with JSON that is not an object")
    return doc
