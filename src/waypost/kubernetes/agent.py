"""The registry side of the sync: the agent's Consul HTTP API, as a third-party writer.

The sync writes only through `/v1/catalog/register` and `/v1/catalog/deregister`
(the agent turns each into one `Catalog.write` plan, like any other writer) and
reads what it wrote back from `/v1/catalog/node/k8s-sync` and
`/v1/health/node/k8s-sync`. It works unchanged against a Consul agent.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx

from .._exceptions import AgentWriteError as AgentError
from .._exceptions import ConfigError
from .registrations import NODE, Registration, from_agent


def agent_url(explicit: str | None, environ: dict[str, str] | None = None) -> str:
    """--agent, else $CONSUL_HTTP_ADDR (scheme optional), else the local agent."""
    env = os.environ if environ is None else environ
    url = explicit or env.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500"
    if "://" not in url:
        url = f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"agent address {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


class AgentClient:
    """Reads and writes the sync's instances on node `k8s-sync`.

    Args:
        url: The agent's HTTP API.
        token: ACL token (`CONSUL_HTTP_TOKEN`), sent as `X-Consul-Token`.
    """

    def __init__(self, url: str, token: str | None = None, lanes: int = 16) -> None:
        self.url = url
        # One TLS context for all 17 clients: httpx builds one per client (loading
        # the CA bundle, ~55 ms of CPU each), which cost the sync ~1 s at start.
        self._verify = httpx.create_ssl_context()
        self._http = self._client(token, 4)
        # Writes go out on `lanes` clients of one connection each, one writer per
        # lane: httpcore's pool costs O(connections x waiting requests) per
        # request, which made one shared pool of 64 the sync's main CPU cost.
        self._lanes = [self._client(token, 1) for _ in range(lanes)]
        self.writes = 0

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def _client(self, token: str | None, connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            verify=self._verify,
            headers={"X-Consul-Token": token} if token else {},
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def register(self, reg: Registration, lane: int = 0) -> None:
        await self._put("/v1/catalog/register", reg.body(), lane)

    async def deregister(self, service_id: str, lane: int = 0) -> None:
        body = {"Node": NODE, "ServiceID": service_id}
        try:
            await self._put("/v1/catalog/deregister", body, lane)
        except AgentError as exc:
            if exc.code != 404:  # already gone: what we wanted
                raise

    async def held(self) -> dict[str, Registration]:
        """Every instance on node `k8s-sync` with its readiness check, by ID."""
        node = await self._get(f"/v1/catalog/node/{quote(NODE)}")
        services: dict[str, Any] = (node or {}).get("Services") or {}
        checks = {
            c.get("ServiceID"): c for c in await self._get(f"/v1/health/node/{quote(NODE)}") or []
        }
        return {sid: from_agent(s, checks.get(sid)) for sid, s in services.items()}

    async def services(self, index: int, wait: float) -> tuple[int, dict[str, list[str]]]:
        """`/v1/catalog/services` as a blocking query: (index, {name: tags})."""
        params = {"index": str(index), "wait": f"{max(1, int(wait * 1000))}ms"} if index else {}
        timeout = httpx.Timeout(wait * 17 / 16 + 10.0, connect=5.0)
        try:
            response = await self._http.get("/v1/catalog/services", params=params, timeout=timeout)
        except httpx.HTTPError as exc:
            raise AgentError(f"cannot reach the agent at {self.url}: {exc!r}") from exc
        body = self._check(response, "GET /v1/catalog/services")
        return max(1, int(response.headers.get("X-Consul-Index", "1"))), body or {}

    async def _put(self, path: str, body: dict[str, Any], lane: int) -> None:
        try:
            response = await self._lanes[lane % len(self._lanes)].put(path, json=body)
        except httpx.HTTPError as exc:
            raise AgentError(f"cannot reach the agent at {self.url}: {exc!r}") from exc
        self._check(response, f"PUT {path}")
        self.writes += 1

    async def _get(self, path: str) -> Any:
        try:
            response = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise AgentError(f"cannot reach the agent at {self.url}: {exc!r}") from exc
        return self._check(response, f"GET {path}")

    def _check(self, response: httpx.Response, what: str) -> Any:
        if response.status_code >= 300:
            raise AgentError(
                f"the agent at {self.url} answered {what} with {response.status_code}: "
                f"{response.text[:300]}",
                code=response.status_code,
            )
        return response.json() if response.content else None

    async def aclose(self) -> None:
        for client in (self._http, *self._lanes):
            await client.aclose()
